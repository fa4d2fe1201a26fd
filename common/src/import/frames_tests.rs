//! Tests of the frame importer on tiny videos the tests write: splits by whole video, video
//! ids and frame indices that round-trip, and bad label files named by path and line.

use std::collections::{BTreeMap, BTreeSet};

use image::{GrayImage, Luma};

use super::*;
use crate::import::test_support::*;

/// (video folder, frame numbers, label file text or none).
const VIDEOS: [(&str, &[i64], Option<&str>); 4] = [
    ("clip_a", &[1, 2, 3, 4, 5, 6, 7, 8], Some("Neutral,Anger,Happy\n0\n1\n-1\n2\n2\n-1\n0\n1\n")),
    ("clip_b", &[1, 2, 3, 4, 5, 6, 7, 8], Some("1\n1\n2\n-1\n0\n0\n2\n2\n")),
    ("clip_c", &[1, 2, 3, 4, 5], None),
    ("clip_d", &[1, 2, 4, 5], Some("2\n-1\n0\n1\n")),
];

/// Writes the videos (frame pixels = 10 × video + frame number) and their label files;
/// returns the expected label of every (video, frame).
fn write_videos(root: &Path, labels: &Path) -> BTreeMap<(i64, i64), i64> {
    std::fs::create_dir_all(labels).expect("mkdir");
    let mut expected = BTreeMap::new();
    for (video, (name, frames, label_text)) in VIDEOS.iter().enumerate() {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let lines: Vec<i64> = label_text.map_or(Vec::new(), |t| t.lines().filter_map(|l| l.parse().ok()).collect());
        for &frame in *frames {
            let file = if video == 3 { format!("frame_{frame}.png") } else { format!("{frame:05}.png") };
            GrayImage::from_pixel(10, 12, Luma([(10 * video as i64 + frame) as u8])).save(dir.join(file)).expect("save");
            expected.insert((video as i64, frame), lines.get(frame as usize - 1).copied().unwrap_or(-1));
        }
        if let Some(text) = label_text {
            std::fs::write(labels.join(format!("{name}.txt")), text).expect("write labels");
        }
    }
    expected
}

/// The videos present in each split.
fn videos_by_split(splits: &BTreeMap<Split, crate::dataset::ShardData>) -> BTreeMap<Split, BTreeSet<i64>> {
    splits.iter().map(|(split, data)| (*split, data.video_ids.as_ref().expect("video ids").iter().copied().collect())).collect()
}

#[test]
fn frames_are_split_by_video_and_keep_their_video_and_frame() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (root, labels) = (dir.path().join("videos"), dir.path().join("labels"));
    let expected = write_videos(&root, &labels);
    for seed in 1..6 {
        let out = dir.path().join(format!("out-{seed}"));
        let options = SplitOptions { val_fraction: 0.34, labeled_fraction: 1.0, seed, shard_size: 5, ..SplitOptions::default() };
        let report = import_frames(&root, &labels, &out, 6, &options, &|_| {}).expect("import");
        assert_eq!(report.manifest.classes, vec!["Neutral", "Anger", "Happy"], "classes from the header");
        assert_eq!(report.manifest.source, "frames");
        assert_eq!(report.rows_read, 25);
        assert_no_staging_left(&out);

        let splits = read_splits(&out);
        let videos = videos_by_split(&splits);
        let val_videos = &videos[&Split::Val];
        assert_eq!(val_videos.len(), 1, "one of three labelled videos is val");
        assert!(!val_videos.contains(&2), "the video without labels is never val");
        for split in [Split::Train, Split::Unlabeled] {
            assert!(videos[&split].is_disjoint(val_videos), "seed {seed}: {split} shares a video with val");
        }
        let val_video = *val_videos.iter().next().expect("val video");
        let unlabelled_in_val = expected.iter().filter(|((video, _), label)| *video == val_video && **label < 0).count();
        assert_eq!(report.ignored, unlabelled_in_val as u64, "unlabelled frames of the val video are left out");

        let mut seen = 0;
        for (split, data) in &splits {
            let (video_ids, frames) = (data.video_ids.as_ref().expect("videos"), data.frame_indices.as_ref().expect("frames"));
            for index in 0..data.len() {
                let (video, frame) = (video_ids[index], frames[index]);
                assert!(data.image(index).iter().all(|p| i64::from(*p) == 10 * video + frame), "pixels of video {video} frame {frame}");
                let label = if *split == Split::Unlabeled { data.hidden_labels.as_ref().map_or(-1, |h| h[index]) } else { data.labels[index] };
                assert_eq!(label, expected[&(video, frame)], "label of video {video} frame {frame} in {split}");
                seen += 1;
            }
        }
        assert_eq!(seen + unlabelled_in_val, 25, "every frame lands once");
    }
}

#[test]
fn a_test_fraction_moves_whole_val_videos_to_test() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (root, labels) = (dir.path().join("videos"), dir.path().join("labels"));
    let expected = write_videos(&root, &labels);
    for seed in 1..4 {
        let out = dir.path().join(format!("out-{seed}"));
        let options = SplitOptions { val_fraction: 0.67, test_fraction: 0.5, labeled_fraction: 1.0, seed, ..SplitOptions::default() };
        let report = import_frames(&root, &labels, &out, 6, &options, &|_| {}).expect("import");
        let videos = videos_by_split(&read_splits(&out));
        let (val, test) = (&videos[&Split::Val], &videos[&Split::Test]);
        assert_eq!((val.len(), test.len(), videos[&Split::Train].len()), (1, 1, 1), "seed {seed}: {videos:?}");
        for (split, held) in &videos {
            if *split != Split::Test {
                assert!(held.is_disjoint(test), "seed {seed}: {split} shares a video with test");
            }
        }
        let held_out: BTreeSet<i64> = val.union(test).copied().collect();
        let unlabelled = expected.iter().filter(|((video, _), label)| held_out.contains(video) && **label < 0).count();
        assert_eq!(report.ignored, unlabelled as u64, "unlabelled frames of val and test videos are left out");
    }
}

#[test]
fn a_labelled_fraction_keeps_or_hides_whole_videos() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (root, labels) = (dir.path().join("videos"), dir.path().join("labels"));
    write_videos(&root, &labels);
    for seed in 1..6 {
        let out = dir.path().join(format!("out-{seed}"));
        let options = SplitOptions { val_fraction: 0.34, labeled_fraction: 0.4, seed, ..SplitOptions::default() };
        import_frames(&root, &labels, &out, 4, &options, &|_| {}).expect("import");
        let splits = read_splits(&out);
        let train_videos = videos_by_split(&splits)[&Split::Train].clone();
        assert_eq!(train_videos.len(), 1, "round(0.4 x 2) = 1 labelled video");
        let pool = &splits[&Split::Unlabeled];
        let hidden = pool.hidden_labels.as_ref().expect("hidden labels");
        let pool_videos = pool.video_ids.as_ref().expect("videos");
        for index in 0..pool.len() {
            if train_videos.contains(&pool_videos[index]) {
                assert_eq!(hidden[index], -1, "a labelled video sends only its unlabelled frames to the pool");
            }
        }
        assert!(hidden.iter().any(|h| *h >= 0), "the hidden video's labels are kept hidden");
    }
}

#[test]
fn bad_label_files_and_frame_names_are_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (root, labels) = (dir.path().join("videos"), dir.path().join("labels"));
    write_videos(&root, &labels);
    let import = || import_frames(&root, &labels, &dir.path().join("out"), 4, &SplitOptions::default(), &|_| {});

    std::fs::write(labels.join("clip_b.txt"), "1\n1\nx\n").expect("write");
    let err = import().expect_err("bad label");
    assert!(err.to_string().contains("clip_b.txt: line 3: label \"x\" is not a number"), "{err}");
    std::fs::write(labels.join("clip_b.txt"), "1\n5\n").expect("write");
    let err = import().expect_err("label out of range");
    assert!(err.to_string().contains("clip_b.txt: line 2: label 5 is outside -1..3"), "{err}");
    std::fs::write(labels.join("clip_b.txt"), "1\n2\n").expect("write");

    GrayImage::from_pixel(3, 3, Luma([0])).save(root.join("clip_c").join("cover.png")).expect("save");
    let err = import().expect_err("unnumbered frame");
    assert!(err.to_string().contains("cover.png: frame file name has no number"), "{err}");
    let options = SplitOptions { skip_bad: true, ..SplitOptions::default() };
    let report = import_frames(&root, &labels, &dir.path().join("out"), 4, &options, &|_| {}).expect("import");
    assert_eq!(report.skipped.len(), 1, "{:?}", report.skipped);

    let err = import_frames(&dir.path().join("nowhere"), &labels, &dir.path().join("out"), 4, &SplitOptions::default(), &|_| {}).expect_err("no root");
    assert!(err.to_string().contains("nowhere"), "{err}");
}

#[test]
fn frame_numbers_come_from_file_names() {
    assert_eq!(frame_number(Path::new("v/00012.jpg")), Some(12));
    assert_eq!(frame_number(Path::new("v/frame_7.png")), Some(7));
    assert_eq!(frame_number(Path::new("v/3_crop_0041.png")), Some(41));
    assert_eq!(frame_number(Path::new("v/cover.png")), None);
}

/// A frame label file as a user may write or damage it: never a panic; labels within
/// −1..1000, or an error naming the file and line.
mod damaged_label_file {
    use proptest::prelude::*;

    use super::*;
    use crate::mutate::damaged;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn a_damaged_label_file_is_read_or_refused_by_name(bytes in damaged(b"Neutral,Anger,Happy\n0\n1\n-1\n2\n".to_vec())) {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("clip.txt");
            std::fs::write(&path, &bytes).expect("write");
            match read_label_file(&path) {
                Ok(Some(file)) => {
                    prop_assert!(file.labels.iter().all(|(_, l)| (-1..MAX_CLASSES as i64).contains(l)));
                    if let Err(error) = classes_of(&[Some(file)], dir.path()) {
                        prop_assert!(error.to_string().contains(&*dir.path().to_string_lossy()), "{error}");
                    }
                }
                Ok(None) => prop_assert!(false, "the file exists"),
                Err(error) => prop_assert!(error.to_string().contains("clip.txt"), "{error}"),
            }
        }
    }

    #[test]
    fn a_huge_label_is_refused_by_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("clip.txt");
        std::fs::write(&path, "0\n1\n4000000000\n").expect("write");
        let error = read_label_file(&path).err().expect("refused").to_string();
        assert!(error.contains("clip.txt") && error.contains("line 3") && error.contains("at most 1000 classes"), "{error}");
    }
}
