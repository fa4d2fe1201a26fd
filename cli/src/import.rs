//! `feral prepare fer2013|images|frames` and `feral dataset inspect`: real datasets in,
//! with a progress counter while rows or images stream through, and a summary at the end.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use feral_common::import::{self, ImportReport, SplitOptions};
use feral_common::prepare::write_dataset_dir;
use feral_common::text::{printable, printable_path};
use indicatif::{ProgressBar, ProgressStyle};

use crate::manifest::describe_manifest;

/// How the imported samples are split; shared by every importer.
#[derive(Clone, Debug, clap::Args)]
pub struct SplitArgs {
    /// Directory to write the dataset into: missing, empty, or holding only a Feral dataset,
    /// which is then replaced whole (the new one is written beside it and swapped in, and no
    /// old shard is left). Any other non-empty directory is refused and left untouched.
    #[arg(long)]
    pub out: PathBuf,
    /// Fraction in [0, 1] of each class's training samples that keeps its label (stratified);
    /// the rest form the unlabelled pool, their labels kept hidden for measuring pseudo-labels.
    #[arg(long, default_value_t = 1.0)]
    pub labeled_fraction: f64,
    /// Fraction in [0, 1] held out for validation when the source has no validation split.
    #[arg(long, default_value_t = 0.1)]
    pub val_fraction: f64,
    /// Fraction in [0, 1) of the validation samples moved to a `test` split (stratified per
    /// class, by video for frames) when the source has none (FER2013 PrivateTest rows are
    /// its test split). Validation chooses the feedback and the best round; test is only
    /// reported, so its metrics are honest. 0: no test split.
    #[arg(long, default_value_t = 0.0)]
    pub test_fraction: f64,
    /// Seed of the splits.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Samples per shard file (at least 1).
    #[arg(long, default_value_t = 4096)]
    pub shard_size: usize,
    /// Skip bad rows and unreadable images (they are listed) instead of stopping at the first.
    #[arg(long)]
    pub skip_bad: bool,
}

impl SplitArgs {
    fn options(&self) -> anyhow::Result<SplitOptions> {
        if !(0.0..=1.0).contains(&self.labeled_fraction) {
            anyhow::bail!("--labeled-fraction must be in [0, 1], got {}", self.labeled_fraction);
        }
        if !(0.0..=1.0).contains(&self.val_fraction) {
            anyhow::bail!("--val-fraction must be in [0, 1], got {}", self.val_fraction);
        }
        if !(0.0..1.0).contains(&self.test_fraction) {
            anyhow::bail!("--test-fraction must be in [0, 1), got {}", self.test_fraction);
        }
        if self.shard_size == 0 {
            anyhow::bail!("--shard-size must be at least 1, got 0");
        }
        Ok(SplitOptions {
            labeled_fraction: self.labeled_fraction,
            val_fraction: self.val_fraction,
            test_fraction: self.test_fraction,
            seed: self.seed,
            shard_size: self.shard_size,
            skip_bad: self.skip_bad,
        })
    }
}

#[derive(Clone, Debug, clap::Args)]
pub struct Fer2013Args {
    /// The FER2013 CSV (`emotion,pixels,Usage`), plain or gzipped.
    #[arg(long)]
    pub csv: PathBuf,
    #[command(flatten)]
    pub split: SplitArgs,
}

#[derive(Clone, Debug, clap::Args)]
pub struct ImagesArgs {
    /// Root folder: class sub-folders (optionally under train/ and val/), or the images of a label list.
    #[arg(long)]
    pub root: PathBuf,
    /// A label list: one `relative/path.jpg LABEL` per line (LABEL an index or a class name).
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Side of the square images after resizing (8 to 512).
    #[arg(long, default_value_t = 48)]
    pub size: u32,
    /// 1 for grayscale, 3 for RGB.
    #[arg(long, default_value_t = 1)]
    pub channels: u32,
    #[command(flatten)]
    pub split: SplitArgs,
}

#[derive(Clone, Debug, clap::Args)]
pub struct FramesArgs {
    /// Root folder with one sub-folder of frame images per video.
    #[arg(long)]
    pub root: PathBuf,
    /// Folder with one `<video>.txt` per video: a label per frame, -1 for unlabelled.
    #[arg(long)]
    pub labels: PathBuf,
    /// Side of the square frames after resizing (8 to 512).
    #[arg(long, default_value_t = 112)]
    pub size: u32,
    #[command(flatten)]
    pub split: SplitArgs,
}

fn check_size(size: u32) -> anyhow::Result<()> {
    if !(8..=512).contains(&size) {
        anyhow::bail!("--size must be between 8 and 512, got {size}");
    }
    Ok(())
}

/// Runs `work` off the async runtime with a counter of rows or images read.
async fn with_progress<F>(what: &str, work: F) -> anyhow::Result<ImportReport>
where
    F: FnOnce(&dyn Fn(u64)) -> Result<ImportReport, import::ImportError> + Send + 'static,
{
    let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) { ProgressBar::new_spinner() } else { ProgressBar::hidden() };
    bar.set_style(ProgressStyle::with_template("{spinner} {msg} {pos} read ({per_sec})").unwrap_or_else(|_| ProgressStyle::default_spinner()));
    bar.set_message(what.to_owned());
    let started = Instant::now();
    let counter = bar.clone();
    let report = tokio::task::spawn_blocking(move || work(&move |done| counter.set_position(done))).await.context("the import stopped unexpectedly")??;
    bar.finish_and_clear();
    println!("read {} rows in {:.1}s", report.rows_read, started.elapsed().as_secs_f64());
    Ok(report)
}

fn summarise(report: &ImportReport, out: &Path) {
    print!("{}", describe_manifest(&report.manifest));
    if report.ignored > 0 {
        println!("{} samples ignored on purpose (e.g. unlabelled frames of validation videos)", report.ignored);
    }
    if !report.skipped.is_empty() {
        println!("{} bad samples skipped:", report.skipped.len());
        for reason in report.skipped.iter().take(20) {
            println!("  {}", printable(reason));
        }
        if report.skipped.len() > 20 {
            println!("  ... and {} more", report.skipped.len() - 20);
        }
    }
    println!("dataset written to {}", printable_path(out));
}

pub async fn fer2013(args: Fer2013Args) -> anyhow::Result<ExitCode> {
    let options = args.split.options()?;
    let (csv, out) = (args.csv.clone(), args.split.out.clone());
    let report =
        with_progress("importing FER2013", move |progress| write_dataset_dir(&out, |dir| import::import_fer2013(&csv, dir, &options, progress))).await?;
    summarise(&report, &args.split.out);
    Ok(ExitCode::SUCCESS)
}

pub async fn images(args: ImagesArgs) -> anyhow::Result<ExitCode> {
    let options = args.split.options()?;
    check_size(args.size)?;
    if ![1, 3].contains(&args.channels) {
        anyhow::bail!("--channels must be 1 or 3, got {}", args.channels);
    }
    let (root, labels, out, size, channels) = (args.root.clone(), args.labels.clone(), args.split.out.clone(), args.size, args.channels);
    let report = with_progress("importing images", move |progress| {
        write_dataset_dir(&out, |dir| import::import_images(&root, labels.as_deref(), dir, size, channels, &options, progress))
    })
    .await?;
    summarise(&report, &args.split.out);
    Ok(ExitCode::SUCCESS)
}

pub async fn frames(args: FramesArgs) -> anyhow::Result<ExitCode> {
    let options = args.split.options()?;
    check_size(args.size)?;
    let (root, labels, out, size) = (args.root.clone(), args.labels.clone(), args.split.out.clone(), args.size);
    let report =
        with_progress("importing frames", move |progress| write_dataset_dir(&out, |dir| import::import_frames(&root, &labels, dir, size, &options, progress)))
            .await?;
    summarise(&report, &args.split.out);
    Ok(ExitCode::SUCCESS)
}

/// `feral dataset inspect DIR`: exits 1 when a shard is missing or does not match.
pub async fn inspect(dir: PathBuf) -> anyhow::Result<ExitCode> {
    let shown = dir.clone();
    let inspection = tokio::task::spawn_blocking(move || import::inspect(&dir)).await.context("inspection stopped unexpectedly")??;
    print!("{inspection}");
    if inspection.all_ok() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("error: some shards of {} are missing or corrupt", printable_path(&shown));
        Ok(ExitCode::FAILURE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(labeled_fraction: f64, val_fraction: f64, shard_size: usize) -> SplitArgs {
        SplitArgs { out: "/tmp/x".into(), labeled_fraction, val_fraction, test_fraction: 0.0, seed: 7, shard_size, skip_bad: false }
    }

    #[test]
    fn bad_split_flags_are_named() {
        let error = |args: SplitArgs| args.options().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error(split(1.5, 0.1, 10)).contains("--labeled-fraction"));
        assert!(error(split(0.1, -0.1, 10)).contains("--val-fraction"));
        assert!(error(split(0.1, 0.1, 0)).contains("--shard-size"));
        for bad in [1.0, -0.1] {
            assert!(error(SplitArgs { test_fraction: bad, ..split(0.1, 0.1, 10) }).contains("--test-fraction"), "{bad}");
        }
        assert_eq!(SplitArgs { test_fraction: 0.5, ..split(0.1, 0.1, 10) }.options().map(|o| o.test_fraction).ok(), Some(0.5));
        assert_eq!(split(0.1, 0.2, 5).options().map(|o| (o.labeled_fraction, o.shard_size)).ok(), Some((0.1, 5)));
        assert!(check_size(4).is_err() && check_size(48).is_ok());
    }

    #[tokio::test]
    async fn a_fer2013_file_imports_and_inspects() {
        let dir = tempfile::tempdir().expect("tempdir");
        let csv = dir.path().join("fer.csv");
        let pixels = vec!["7"; 2304].join(" ");
        let mut text = String::from("emotion,pixels,Usage\n");
        for i in 0..28 {
            text.push_str(&format!("{},{pixels},{}\n", i % 7, if i < 21 { "Training" } else { "PublicTest" }));
        }
        std::fs::write(&csv, text).expect("write");
        let out = dir.path().join("data");
        let args = Fer2013Args { csv, split: SplitArgs { out: out.clone(), ..split(1.0, 0.1, 8) } };
        assert_eq!(fer2013(args).await.expect("import"), ExitCode::SUCCESS);
        assert_eq!(inspect(out.clone()).await.expect("inspect"), ExitCode::SUCCESS);
        std::fs::write(out.join("train-00000.safetensors"), b"broken").expect("corrupt a shard");
        assert_eq!(inspect(out).await.expect("inspect"), ExitCode::FAILURE);
    }

    #[derive(Debug, clap::Parser)]
    struct Fer2013Command {
        #[command(flatten)]
        args: Fer2013Args,
    }

    #[tokio::test]
    async fn test_fraction_splits_public_test_into_val_and_test() {
        use clap::Parser;
        let dir = tempfile::tempdir().expect("tempdir");
        let csv = dir.path().join("fer.csv");
        let pixels = vec!["7"; 2304].join(" ");
        let mut text = String::from("emotion,pixels,Usage\n");
        for i in 0..42 {
            text.push_str(&format!("{},{pixels},{}\n", i % 7, if i < 28 { "Training" } else { "PublicTest" }));
        }
        std::fs::write(&csv, text).expect("write");
        let out = dir.path().join("data");
        let (csv, out_arg) = (csv.display().to_string(), out.display().to_string());
        let command = Fer2013Command::try_parse_from(["fer2013", "--csv", &csv, "--out", &out_arg, "--test-fraction", "0.5"]).expect("flags parse");
        assert_eq!(command.args.split.test_fraction, 0.5);
        assert_eq!(fer2013(command.args).await.expect("import"), ExitCode::SUCCESS);
        let manifest = feral_common::dataset::Manifest::load(&out).expect("manifest");
        let counts = |split| manifest.splits.get(&split).map(|s| s.class_counts.clone()).unwrap_or_default();
        assert_eq!(counts(feral_common::dataset::Split::Val), vec![1; 7], "one of each class's two PublicTest rows stays val");
        assert_eq!(counts(feral_common::dataset::Split::Test), vec![1; 7], "the other is test");
    }
}
