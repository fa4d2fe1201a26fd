//! Tests of the image-folder importer on tiny PNG and JPEG files the tests write: both
//! layouts, resizing, colour, and unreadable images named by path.

use image::{ImageFormat, Rgb, RgbImage};

use super::*;
use crate::dataset::Split;
use crate::import::test_support::*;

/// A solid-colour image of `width`×`height`, saved as PNG or JPEG by extension.
fn write_image(path: &Path, width: u32, height: u32, colour: [u8; 3]) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    let format = if path.extension().is_some_and(|e| e == "png") { ImageFormat::Png } else { ImageFormat::Jpeg };
    RgbImage::from_pixel(width, height, Rgb(colour)).save_with_format(path, format).expect("save image");
}

/// The colour of image `index` of `class`: the class in red, the index in green.
fn colour(class: usize, index: usize) -> [u8; 3] {
    [40 * class as u8 + 20, 10 * index as u8, 200]
}

/// `count` images per (folder name, class index, count) under `dir/<name>/`, coloured by
/// class index, alternating PNG and JPEG and sizes.
fn write_class_folders(dir: &Path, classes: &[(&str, usize, usize)]) {
    for &(name, class, count) in classes {
        for index in 0..count {
            let extension = if index % 2 == 0 { "png" } else { "jpg" };
            let path = dir.join(name).join(format!("img{index:03}.{extension}"));
            write_image(&path, 9 + index as u32, 30 - index as u32, colour(class, index));
        }
    }
}

/// Asserts every sample's pixels show its class's colour (JPEG within a tolerance).
fn assert_colours_match_labels(splits: &std::collections::BTreeMap<Split, crate::dataset::ShardData>) {
    for data in splits.values() {
        for index in 0..data.len() {
            let label = data.labels[index].max(data.hidden_labels.as_ref().map_or(-1, |h| h[index]));
            let red = data.image(index)[0];
            assert!((i64::from(red) - (40 * label + 20)).abs() <= 6, "sample {} red {red} label {label}", data.sample_ids[index]);
        }
    }
}

#[test]
fn class_folders_import_resized_and_stratified() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("faces");
    write_class_folders(&root, &[("sad", 2, 10), ("angry", 0, 6), ("happy", 1, 14)]);
    std::fs::write(root.join("happy").join("notes.txt"), "not an image").expect("write");
    let out = dir.path().join("out");
    let options = SplitOptions { labeled_fraction: 0.5, val_fraction: 0.2, shard_size: 7, ..SplitOptions::default() };
    let report = import_images(&root, None, &out, 8, 3, &options, &|_| {}).expect("import");
    assert_eq!(report.manifest.classes, vec!["angry", "happy", "sad"], "sorted folder names");
    assert_eq!(report.manifest.image, ImageShape { height: 8, width: 8, channels: 3 });
    assert_eq!(report.rows_read, 30);
    assert_eq!(report.manifest.source, "images");
    assert_no_staging_left(&out);

    let splits = read_splits(&out);
    for (class, n) in [(0, 6), (1, 14), (2, 10)] {
        let val = (0.2 * n as f64).round() as usize;
        assert_eq!(count_label(&splits[&Split::Val], class), val, "class {class}");
        assert_eq!(count_label(&splits[&Split::Train], class), (0.5 * (n - val) as f64).round() as usize, "class {class}");
    }
    assert_colours_match_labels(&splits);
    // Sample 0 is angry/img000.png, 9x30: PNG keeps its colour exactly through the resize.
    let first = splits.values().find_map(|data| data.sample_ids.iter().position(|id| *id == 0).map(|i| data.image(i).to_vec()));
    let first = first.expect("sample 0");
    assert!(first.chunks(3).all(|p| p == colour(0, 0)), "{first:?}");
}

#[test]
fn train_and_val_folders_define_the_val_split() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("raf");
    write_class_folders(&root.join("train"), &[("1", 0, 4), ("2", 1, 5), ("10", 2, 6)]);
    write_class_folders(&root.join("val"), &[("1", 0, 2), ("2", 1, 2), ("10", 2, 1)]);
    write_class_folders(&root.join("test"), &[("1", 0, 3)]);
    let out = dir.path().join("out");
    let report = import_images(&root, None, &out, 6, 1, &SplitOptions::default(), &|_| {}).expect("import");
    assert_eq!(report.manifest.classes, vec!["1", "2", "10"], "numeric names sort as numbers");
    assert_eq!(report.ignored, 3, "the unused test folder is counted");
    let splits = read_splits(&out);
    assert_eq!(splits[&Split::Val].len(), 5);
    assert_eq!(splits[&Split::Train].len(), 15);
    assert_eq!(splits[&Split::Val].image(0).len(), 36, "grayscale 6x6");
    let val_ids: Vec<i64> = splits[&Split::Val].sample_ids.clone();
    assert!(val_ids.iter().all(|id| *id >= 15), "val ids are the val folder's images, listed after train's: {val_ids:?}");
}

#[test]
fn a_test_fraction_splits_the_val_folder_per_class() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("affectnet");
    write_class_folders(&root.join("train"), &[("a", 0, 3), ("b", 1, 3)]);
    write_class_folders(&root.join("val"), &[("a", 0, 4), ("b", 1, 3)]);
    let out = dir.path().join("out");
    let options = SplitOptions { test_fraction: 0.5, ..SplitOptions::default() };
    import_images(&root, None, &out, 6, 1, &options, &|_| {}).expect("import");
    let splits = read_splits(&out);
    let (val, test) = (&splits[&Split::Val], &splits[&Split::Test]);
    assert_eq!((count_label(val, 0), count_label(test, 0)), (2, 2));
    assert_eq!((count_label(val, 1), count_label(test, 1)), (1, 2), "round(1.5) of 3 to test, one left in val");
    assert!(val.sample_ids.iter().chain(&test.sample_ids).all(|id| *id >= 6), "test comes out of the val folder");
    assert_eq!(splits[&Split::Train].len(), 6);
}

#[test]
fn a_label_list_names_images_by_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("list");
    let mut by_name = String::from("# path label\n");
    let mut by_index = String::new();
    let names = ["surprise", "fear", "neutral"];
    for index in 0..18 {
        let class = index % 3;
        let folder = if index >= 15 { "test" } else { "images" };
        let relative = format!("{folder}/face {index}.{}", if index % 2 == 0 { "png" } else { "jpeg" });
        write_image(&root.join(&relative), 20, 11, colour(class, index));
        by_name.push_str(&format!("{relative} {}\n", names[class]));
        by_index.push_str(&format!("{relative},{class}\n"));
    }
    std::fs::write(root.join("names.txt"), &by_name).expect("write");
    std::fs::write(root.join("indices.txt"), &by_index).expect("write");

    let out = dir.path().join("by-name");
    let report = import_images(&root, Some(&root.join("names.txt")), &out, 5, 3, &SplitOptions::default(), &|_| {}).expect("import");
    assert_eq!(report.manifest.classes, vec!["fear", "surprise", "neutral"], "basic expressions in FER2013's order, not alphabetical");
    let splits = read_splits(&out);
    assert_eq!(splits[&Split::Val].sample_ids, vec![15, 16, 17], "paths under test/ are the val split");
    let train = &splits[&Split::Train];
    let sample_7 = train.sample_ids.iter().position(|id| *id == 7).expect("sample 7");
    assert_eq!(report.manifest.classes[train.labels[sample_7] as usize], names[7 % 3]);

    let out = dir.path().join("by-index");
    let report = import_images(&root, Some(&root.join("indices.txt")), &out, 5, 3, &SplitOptions::default(), &|_| {}).expect("import");
    assert_eq!(report.manifest.classes, vec!["0", "1", "2"]);
    assert_colours_match_labels(&read_splits(&out));
}

#[test]
fn an_unreadable_image_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("faces");
    write_class_folders(&root, &[("a", 0, 3), ("b", 1, 3)]);
    let broken = root.join("b").join("broken.jpg");
    std::fs::write(&broken, b"this is not a jpeg").expect("write");
    let err = import_images(&root, None, &dir.path().join("out"), 8, 1, &SplitOptions::default(), &|_| {}).expect_err("broken");
    assert!(matches!(&err, ImportError::Image { path, .. } if path == &broken), "{err}");
    assert!(err.to_string().contains("broken.jpg"), "{err}");

    // A third of each class's three images is held out, so val is not empty.
    let options = SplitOptions { skip_bad: true, val_fraction: 0.34, ..SplitOptions::default() };
    let report = import_images(&root, None, &dir.path().join("out"), 8, 1, &options, &|_| {}).expect("import");
    assert_eq!(report.skipped.len(), 1);
    assert!(report.skipped[0].contains("broken.jpg"), "{:?}", report.skipped);
    assert_eq!(report.manifest.splits.values().map(|s| s.samples).sum::<u64>(), 6);

    std::fs::write(root.join("list.txt"), "a/img000.png 0\nb/gone.png 1\n").expect("write");
    let err = import_images(&root, Some(&root.join("list.txt")), &dir.path().join("out"), 8, 1, &SplitOptions::default(), &|_| {}).expect_err("gone");
    assert!(err.to_string().contains("gone.png"), "{err}");
    std::fs::write(root.join("list.txt"), "a/img000.png 0\nnolabel\n").expect("write");
    let err = import_images(&root, Some(&root.join("list.txt")), &dir.path().join("out"), 8, 1, &SplitOptions::default(), &|_| {}).expect_err("bad line");
    assert!(err.to_string().contains("list.txt: line 2"), "{err}");
    let err = import_images(&root, None, &dir.path().join("out"), 8, 2, &SplitOptions::default(), &|_| {}).expect_err("channels");
    assert!(err.to_string().contains("channels"), "{err}");
}

/// A label list as a user may write or damage it: never a panic (nor a class list the size
/// of a huge label); a listing of at most one image per line, or an error naming the file.
mod damaged_label_list {
    use proptest::prelude::*;

    use super::*;
    use crate::mutate::damaged;

    const VALID: &str = "# path label\ntrain/a.png 0\ntrain/b.png 1\nval/c.png,2\ntrain/d.png 1\n";

    #[test]
    fn a_huge_numeric_label_is_refused_by_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let labels = dir.path().join("labels.txt");
        std::fs::write(&labels, "a.png 0\nb.png 99999999999999\n").expect("write");
        let error = list_from_label_file(dir.path(), &labels).err().expect("refused").to_string();
        assert!(error.contains("labels.txt") && error.contains("line 2") && error.contains("at most 1000 classes"), "{error}");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn a_damaged_label_list_is_listed_or_refused_by_name(bytes in damaged(VALID.as_bytes().to_vec())) {
            let dir = tempfile::tempdir().expect("tempdir");
            let labels = dir.path().join("labels.txt");
            std::fs::write(&labels, &bytes).expect("write");
            match list_from_label_file(dir.path(), &labels) {
                Ok(listing) => {
                    prop_assert!(listing.items.len() <= bytes.split(|b| *b == b'\n').count());
                    prop_assert!((2..=MAX_CLASSES.max(listing.items.len())).contains(&listing.classes.len()));
                }
                Err(error) => prop_assert!(error.to_string().contains("labels.txt"), "{error}"),
            }
        }
    }
}

#[test]
fn basic_expressions_take_one_order_whichever_importer_lists_them() {
    let sorted = |names: &[&str]| {
        let mut names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        super::sort_class_names(&mut names);
        names
    };
    assert_eq!(sorted(&["Sad", "happy", "neutral", "contempt", "Angry", "surprise"]), ["Angry", "happy", "Sad", "surprise", "neutral", "contempt"]);
    assert_eq!(sorted(&["surprise", "cat", "happy"]), ["cat", "happy", "surprise"], "other names sort as text");
    assert_eq!(sorted(&["10", "2", "1"]), ["1", "2", "10"], "numbers sort as numbers");
}
