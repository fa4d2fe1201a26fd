//! `feral prepare SOURCE`: turns a source into a dataset directory: generated synthetic
//! faces here, FER2013 CSVs, image folders and video frames in `crate::import`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use feral_common::dataset::Manifest;
use feral_common::prepare::{prepare_synthetic, prepare_synthetic_video, write_dataset_dir, SyntheticSplits};
use feral_common::synthetic::SyntheticConfig;
use feral_common::text::printable_path;

use crate::manifest::describe_manifest;

#[derive(Debug, clap::Subcommand)]
pub enum PrepareSource {
    /// Generate the procedural synthetic facial-expression dataset (no real data needed).
    Synthetic(SyntheticArgs),
    /// Import a FER2013 CSV (Training rows train, PublicTest rows validate, PrivateTest rows test).
    Fer2013(crate::import::Fer2013Args),
    /// Import image folders (RAF-DB / AffectNet style) or a label list.
    Images(crate::import::ImagesArgs),
    /// Import video frames (Aff-Wild2 style), split by video.
    Frames(crate::import::FramesArgs),
}

#[derive(Clone, Debug, clap::Args)]
pub struct SyntheticArgs {
    /// Directory to write the dataset into: missing, empty, or holding only a Feral dataset,
    /// which is then replaced whole (the new one is written beside it and swapped in, and no
    /// old shard is left). Any other non-empty directory is refused and left untouched.
    #[arg(long)]
    pub out: PathBuf,
    /// Number of images to generate (at least 10).
    #[arg(long, default_value_t = 6000)]
    pub samples: usize,
    /// Side of the square grayscale images in pixels (16 to 256).
    #[arg(long, default_value_t = 48)]
    pub image_size: u32,
    /// Count of the most frequent class over the least frequent one (at least 1).
    #[arg(long, default_value_t = 10.0)]
    pub imbalance: f64,
    /// Probability in [0, 1) that a training label is replaced by another class.
    #[arg(long, default_value_t = 0.1)]
    pub label_noise: f64,
    /// Fraction in (0, 1] of the non-validation samples that keep their label; the rest
    /// form the unlabelled pool.
    #[arg(long, default_value_t = 1.0)]
    pub labeled_fraction: f64,
    /// Fraction in (0, 1) of the samples held out for validation.
    #[arg(long, default_value_t = 0.2)]
    pub val_fraction: f64,
    /// Fraction in [0, 1) of the validation samples (whole clips for videos) moved to a
    /// `test` split. Validation chooses the feedback and the best round; test is only
    /// reported, so its metrics are honest. 0: no test split.
    #[arg(long, default_value_t = 0.0)]
    pub test_fraction: f64,
    /// Seed of the whole dataset.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Samples per shard file (at least 1).
    #[arg(long, default_value_t = 4096)]
    pub shard_size: usize,
    /// Generate video clips of this many frames instead of still images (0: stills). Each
    /// clip shows one face whose expression comes and goes; frames carry their video id and
    /// frame index, whole clips are split, and jobs on the dataset train the temporal
    /// encoder (`[semi_supervised] temporal_window`).
    #[arg(long, default_value_t = 0)]
    pub frames_per_video: usize,
}

impl SyntheticArgs {
    /// The generator settings these flags ask for, or an error naming the flag.
    pub fn validate(&self) -> anyhow::Result<(SyntheticConfig, SyntheticSplits)> {
        if self.samples < 10 {
            anyhow::bail!("--samples must be at least 10, got {}", self.samples);
        }
        if !(16..=256).contains(&self.image_size) {
            anyhow::bail!("--image-size must be between 16 and 256, got {}", self.image_size);
        }
        if !(self.imbalance.is_finite() && self.imbalance >= 1.0) {
            anyhow::bail!("--imbalance must be a number of at least 1, got {}", self.imbalance);
        }
        if !(0.0..1.0).contains(&self.label_noise) {
            anyhow::bail!("--label-noise must be in [0, 1), got {}", self.label_noise);
        }
        if !(self.labeled_fraction > 0.0 && self.labeled_fraction <= 1.0) {
            anyhow::bail!("--labeled-fraction must be in (0, 1], got {}", self.labeled_fraction);
        }
        if !(self.val_fraction > 0.0 && self.val_fraction < 1.0) {
            anyhow::bail!("--val-fraction must be in (0, 1), got {}", self.val_fraction);
        }
        if !(0.0..1.0).contains(&self.test_fraction) {
            anyhow::bail!("--test-fraction must be in [0, 1), got {}", self.test_fraction);
        }
        if self.shard_size == 0 {
            anyhow::bail!("--shard-size must be at least 1, got 0");
        }
        if self.frames_per_video == 1 || self.frames_per_video > self.samples {
            anyhow::bail!("--frames-per-video must be 0 (stills) or from 2 to --samples ({}), got {}", self.samples, self.frames_per_video);
        }
        let config = SyntheticConfig {
            samples: self.samples,
            image_size: self.image_size,
            imbalance_ratio: self.imbalance,
            label_noise: self.label_noise,
            seed: self.seed,
        };
        let splits = SyntheticSplits {
            val_fraction: self.val_fraction,
            test_fraction: self.test_fraction,
            labeled_fraction: self.labeled_fraction,
            shard_size: self.shard_size,
        };
        Ok((config, splits))
    }
}

/// `feral prepare SOURCE ...`.
pub async fn prepare(source: PrepareSource) -> anyhow::Result<ExitCode> {
    match source {
        PrepareSource::Synthetic(args) => {
            let (config, splits) = args.validate()?;
            let what = if args.frames_per_video > 0 { format!("video frames in clips of {}", args.frames_per_video) } else { "images".to_owned() };
            println!("generating {} synthetic {what} of {}x{} into {}", config.samples, config.image_size, config.image_size, printable_path(&args.out));
            let manifest = generate_synthetic(&args.out, config, splits, args.frames_per_video).await?;
            print!("{}", describe_manifest(&manifest));
            Ok(ExitCode::SUCCESS)
        }
        PrepareSource::Fer2013(args) => crate::import::fer2013(args).await,
        PrepareSource::Images(args) => crate::import::images(args).await,
        PrepareSource::Frames(args) => crate::import::frames(args).await,
    }
}

/// Writes a synthetic dataset into `out` off the async runtime: still images, or clips of
/// `frames_per_video` frames when that is not 0. A dataset already in `out` is replaced
/// whole ([`write_dataset_dir`]).
pub async fn generate_synthetic(out: &Path, config: SyntheticConfig, splits: SyntheticSplits, frames_per_video: usize) -> anyhow::Result<Manifest> {
    let out_dir = out.to_path_buf();
    let manifest = tokio::task::spawn_blocking(move || {
        write_dataset_dir(&out_dir, |dir| match frames_per_video {
            0 => prepare_synthetic(dir, &config, &splits).map_err(anyhow::Error::from),
            frames => prepare_synthetic_video(dir, &config, &splits, frames).map_err(anyhow::Error::from),
        })
    })
    .await
    .context("dataset generation stopped unexpectedly")?
    .with_context(|| format!("cannot write the synthetic dataset into {}", out.display()))?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Harness {
        #[command(subcommand)]
        source: PrepareSource,
    }

    fn parse(extra: &[&str]) -> SyntheticArgs {
        let args = ["prepare", "synthetic", "--out", "/tmp/x"].iter().chain(extra).copied();
        match Harness::parse_from(args).source {
            PrepareSource::Synthetic(args) => args,
            other => panic!("parsed {other:?}"),
        }
    }

    fn rejection(extra: &[&str]) -> String {
        parse(extra).validate().err().map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn defaults_are_valid_and_reach_the_generator() {
        let (config, splits) = parse(&[]).validate().expect("defaults are valid");
        assert_eq!(config, SyntheticConfig { samples: 6000, ..SyntheticConfig::default() });
        assert_eq!(splits, SyntheticSplits::default());
        let (config, splits) = parse(&["--samples", "10", "--image-size", "16", "--labeled-fraction", "0.25", "--seed", "9"]).validate().expect("valid");
        assert_eq!((config.samples, config.image_size, config.seed), (10, 16, 9));
        assert_eq!(splits.labeled_fraction, 0.25);
        assert_eq!(splits.test_fraction, 0.0, "no test split unless asked");
        let (_, splits) = parse(&["--test-fraction", "0.5"]).validate().expect("valid");
        assert_eq!(splits.test_fraction, 0.5);
    }

    #[test]
    fn each_bad_flag_is_named() {
        assert!(rejection(&["--samples", "9"]).contains("--samples"));
        assert!(rejection(&["--image-size", "15"]).contains("--image-size"));
        assert!(rejection(&["--image-size", "257"]).contains("--image-size"));
        assert!(rejection(&["--imbalance", "0.5"]).contains("--imbalance"));
        assert!(rejection(&["--imbalance", "NaN"]).contains("--imbalance"));
        assert!(rejection(&["--label-noise", "1.0"]).contains("--label-noise"));
        assert!(rejection(&["--label-noise=-0.1"]).contains("--label-noise"));
        assert!(rejection(&["--labeled-fraction", "0"]).contains("--labeled-fraction"));
        assert!(rejection(&["--labeled-fraction", "1.5"]).contains("--labeled-fraction"));
        assert!(rejection(&["--val-fraction", "0"]).contains("--val-fraction"));
        assert!(rejection(&["--val-fraction", "1"]).contains("--val-fraction"));
        assert!(rejection(&["--test-fraction", "1"]).contains("--test-fraction"));
        assert!(rejection(&["--test-fraction=-0.1"]).contains("--test-fraction"));
        assert!(rejection(&["--shard-size", "0"]).contains("--shard-size"));
        assert!(rejection(&["--frames-per-video", "1"]).contains("--frames-per-video"));
        assert!(rejection(&["--samples", "100", "--frames-per-video", "101"]).contains("--frames-per-video"));
    }

    fn files(dir: &Path) -> std::collections::BTreeSet<String> {
        std::fs::read_dir(dir).expect("list").map(|e| e.expect("entry").file_name().to_string_lossy().into_owned()).collect()
    }

    #[tokio::test]
    async fn preparing_over_a_dataset_replaces_it_whole_and_other_directories_are_refused() {
        let root = tempfile::tempdir().expect("tempdir");
        let out = root.path().join("data");
        let out_arg = out.display().to_string();
        let synthetic = ["prepare", "synthetic", "--out", &out_arg, "--samples", "300", "--image-size", "16", "--shard-size", "10"];
        assert_eq!(prepare(Harness::parse_from(synthetic).source).await.expect("synthetic"), ExitCode::SUCCESS);
        let old = files(&out);
        assert!(old.len() > 25, "{old:?}");

        let csv = root.path().join("fer.csv");
        let pixels = vec!["7"; 2304].join(" ");
        let mut text = String::from("emotion,pixels,Usage\n");
        for i in 0..28 {
            text.push_str(&format!("{},{pixels},{}\n", i % 7, if i < 21 { "Training" } else { "PublicTest" }));
        }
        std::fs::write(&csv, text).expect("write");
        let csv_arg = csv.display().to_string();
        let fer2013 = ["prepare", "fer2013", "--csv", &csv_arg, "--out", &out_arg, "--shard-size", "16"];
        assert_eq!(prepare(Harness::parse_from(fer2013).source).await.expect("fer2013"), ExitCode::SUCCESS);
        let manifest = Manifest::load(&out).expect("the new dataset loads");
        assert_eq!(manifest.name, "fer2013");
        let shards = manifest.splits.values().flat_map(|s| &s.shards).map(|s| s.file.clone());
        let expected: std::collections::BTreeSet<String> = shards.chain(["manifest.json".to_owned()]).collect();
        assert_eq!(files(&out), expected, "only the new dataset's files are left");
        assert_eq!(feral_common::dataset::Dataset::open(&out).and_then(|d| d.verify()).expect("verify"), 28);
        assert_eq!(files(root.path()), ["data".to_owned(), "fer.csv".to_owned()].into(), "no temporary directory is left");

        let notes = root.path().join("notes");
        std::fs::create_dir(&notes).expect("mkdir");
        std::fs::write(notes.join("thesis.tex"), "years of work").expect("write");
        let notes_arg = notes.display().to_string();
        let refused = prepare(Harness::parse_from(["prepare", "synthetic", "--out", &notes_arg, "--samples", "100"]).source).await;
        let message = format!("{:#}", refused.expect_err("not a dataset"));
        assert!(message.contains("notes is not empty and holds no Feral dataset manifest; choose an empty directory"), "{message}");
        assert_eq!(files(&notes), ["thesis.tex".to_owned()].into());
    }

    #[tokio::test]
    async fn generated_dataset_is_described_by_split_and_class() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (config, splits) = parse(&["--samples", "200", "--image-size", "16"]).validate().expect("valid");
        let manifest = generate_synthetic(dir.path(), config, splits, 0).await.expect("generate");
        let text = describe_manifest(&manifest);
        assert!(text.starts_with("dataset synthetic: 200 images of 16x16x1, 7 classes\n"), "{text}");
        let header: Vec<&str> = text.lines().nth(1).unwrap_or_default().split_whitespace().collect();
        assert_eq!(header, ["SPLIT", "SAMPLES", "angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]);
        let train = text.lines().find(|l| l.starts_with("train")).unwrap_or_default();
        let cells: Vec<u64> = train.split_whitespace().skip(1).filter_map(|c| c.parse().ok()).collect();
        assert_eq!(cells.len(), 8, "{train}");
        assert_eq!(cells[0], cells[1..].iter().sum::<u64>(), "class counts add up: {train}");
        assert!(!text.lines().any(|l| l.starts_with("test")), "no test split by default: {text}");

        let split = tempfile::tempdir().expect("tempdir");
        let (config, splits) = parse(&["--samples", "200", "--image-size", "16", "--test-fraction", "0.5"]).validate().expect("valid");
        let manifest = generate_synthetic(split.path(), config, splits, 0).await.expect("generate");
        let text = describe_manifest(&manifest);
        let rows: Vec<&str> = text.lines().skip(2).filter_map(|l| l.split_whitespace().next()).collect();
        assert_eq!(rows, ["train", "val", "test"], "{text}");
    }
}
