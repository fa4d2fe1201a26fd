//! Centred windows of neighbouring video frames for the temporal encoder (docs/design.md
//! §1, step 9). Pure index arithmetic: which samples stand around each sample in
//! its own video, in frame order.

use std::collections::HashMap;

/// For each of the `n = video_ids.len()` samples, the indices of the `window` (odd) samples
/// centred on it in its video, ordered by frame index: row `i` of the returned `n × window`
/// matrix (flattened row-major) is `[i − h, …, i, …, i + h]` in video time, `h = window / 2`.
/// At a video's ends the first or last frame repeats (edge padding), so every row has
/// `window` entries and the centre entry is always `i` itself. A sample with no video
/// (`video_id < 0`) is a video of one frame. Frames of a video need not be contiguous or
/// sorted in the input; gaps in frame numbers are ignored (neighbours are the nearest
/// frames present).
pub fn windows(video_ids: &[i64], frame_indices: &[i64], window: usize) -> Vec<usize> {
    assert_eq!(video_ids.len(), frame_indices.len(), "one frame index per video id");
    assert!(window % 2 == 1, "a centred window has an odd length, got {window}");
    let half = window / 2;
    let mut videos: HashMap<i64, Vec<usize>> = HashMap::new();
    for (index, &video) in video_ids.iter().enumerate() {
        if video >= 0 {
            videos.entry(video).or_default().push(index);
        }
    }
    let mut rows = vec![0; video_ids.len() * window];
    for (index, &video) in video_ids.iter().enumerate() {
        if video < 0 {
            rows[index * window..(index + 1) * window].fill(index);
        }
    }
    for mut frames in videos.into_values() {
        frames.sort_by_key(|&i| (frame_indices[i], i));
        let last = frames.len() - 1;
        for (position, &index) in frames.iter().enumerate() {
            let row = &mut rows[index * window..(index + 1) * window];
            for (slot, entry) in row.iter_mut().enumerate() {
                let neighbour = (position + slot).saturating_sub(half).min(last);
                *entry = frames[neighbour];
            }
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn windows_follow_frame_order_and_repeat_the_ends() {
        // Video 7 has frames 0..4 stored out of order; video 3 has one frame; sample 5 has none.
        let videos = [7, 7, 3, 7, 7, -1];
        let frames = [2, 0, 0, 1, 3, -1];
        let rows = windows(&videos, &frames, 3);
        let row = |i: usize| &rows[i * 3..(i + 1) * 3];
        // Video 7 in time order is samples [1, 3, 0, 4].
        assert_eq!(row(1), [1, 1, 3], "first frame repeats on the left");
        assert_eq!(row(3), [1, 3, 0]);
        assert_eq!(row(0), [3, 0, 4]);
        assert_eq!(row(4), [0, 4, 4], "last frame repeats on the right");
        assert_eq!(row(2), [2, 2, 2], "a one-frame video");
        assert_eq!(row(5), [5, 5, 5], "a sample without a video");
        assert_eq!(windows(&videos, &frames, 1), [0, 1, 2, 3, 4, 5]);
    }

    proptest! {
        #[test]
        fn every_window_is_centred_and_stays_in_its_video(
            samples in proptest::collection::vec((0i64..4, 0i64..50), 1..60),
            half in 0usize..4,
        ) {
            let (videos, frames): (Vec<i64>, Vec<i64>) = samples.into_iter().unzip();
            let window = 2 * half + 1;
            let rows = windows(&videos, &frames, window);
            prop_assert_eq!(rows.len(), videos.len() * window);
            for (i, row) in rows.chunks(window).enumerate() {
                prop_assert_eq!(row[half], i);
                prop_assert!(row.iter().all(|&j| videos[j] == videos[i]));
                prop_assert!(row.windows(2).all(|w| frames[w[0]] <= frames[w[1]]), "frame order: {:?}", row);
            }
        }
    }
}
