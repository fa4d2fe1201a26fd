//! The FER2013 CSV importer: `emotion,pixels,Usage` rows (48×48 grayscale faces as 2,304
//! space-separated values), plain or gzipped. One thread decompresses, hashes and cuts the
//! text into chunks of lines; rayon parses each chunk's rows in parallel into the staging
//! file, so memory stays bounded by a few chunks whatever the file's size.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use flate2::read::MultiGzDecoder;
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::dataset::ImageShape;
use crate::synthetic::CLASS_NAMES;

use super::split::assign_labelled;
use super::staging::{StagedSample, Staging, Target};
use super::{hex, require_train_and_val, ImportError, ImportReport, SplitOptions};

const SIDE: u32 = 48;
const PIXELS: usize = (SIDE * SIDE) as usize;
/// Lines per parallel chunk (about 9 MB of FER2013 text).
const CHUNK_LINES: usize = 1024;

/// Imports a FER2013 CSV (`emotion,pixels,Usage` header, columns in any order; a file
/// without a `Usage` column is all `Training`), plain or gzipped (by the `.gz` extension
/// or the gzip magic bytes), into a dataset directory at `out`.
///
/// `Training` rows go to train, or to unlabeled with their label hidden, by a stratified
/// seeded `labeled_fraction`; `PublicTest` rows are the val split (when there are none, a
/// stratified seeded `val_fraction` of `Training` is held out instead); `PrivateTest` rows
/// are the test split, which is only reported (when there are none, a stratified seeded
/// `test_fraction` of the val rows moves to test instead; with 0, there is no test split).
/// A bad row (wrong column count, non-numeric value,
/// wrong pixel count, value above 255, emotion outside 0..7, unknown Usage) fails the import
/// naming its line, or with `skip_bad` is skipped and listed. Sample ids are the rows'
/// positions in the file (0 for the first row after the header). `source_sha256` is the
/// sha256 of the CSV text after decompression, so a plain and a gzipped copy agree.
/// `progress` receives the number of rows read so far after each chunk.
pub fn import_fer2013(csv: &Path, out: &Path, options: &SplitOptions, progress: &dyn Fn(u64)) -> Result<ImportReport, ImportError> {
    options.validate()?;
    let mut reader = BufReader::with_capacity(1 << 20, HashingReader::new(open_maybe_gzipped(csv)?));
    let mut header = Vec::new();
    reader.read_until(b'\n', &mut header).map_err(ImportError::io("read", csv))?;
    let columns = Columns::from_header(&header).map_err(|problem| ImportError::Row { path: csv.to_path_buf(), line: 1, problem })?;

    let shape = ImageShape { height: SIDE, width: SIDE, channels: 1 };
    let mut staging = Staging::create(out, shape)?;
    let mut tally = Tally::default();
    let digest = std::thread::scope(|scope| -> Result<String, ImportError> {
        let (sender, receiver) = sync_channel(2);
        let reading = scope.spawn(move || read_chunks(reader, sender));
        let consumed = consume_chunks(receiver, csv, &columns, options, &mut staging, &mut tally, progress);
        let digest = reading.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        consumed.map(|()| digest)
    })?;
    if staging.samples().is_empty() {
        return Err(ImportError::Empty { path: csv.to_path_buf() });
    }
    if staging.samples().iter().all(|s| s.given_val || s.given_test) {
        let problem = "has no `Training` rows; the train split and the unlabelled pool come from them".to_owned();
        return Err(ImportError::Layout { path: csv.to_path_buf(), problem });
    }

    let labels: Vec<i64> = staging.samples().iter().map(|s| s.label).collect();
    let given_val: Vec<bool> = staging.samples().iter().map(|s| s.given_val).collect();
    let given_test: Vec<bool> = staging.samples().iter().map(|s| s.given_test).collect();
    let splits: Vec<_> = assign_labelled(&labels, &given_val, &given_test, options).into_iter().map(Some).collect();
    require_train_and_val(csv, &splits, options)?;
    let target = Target {
        out,
        name: "fer2013".to_owned(),
        classes: CLASS_NAMES.iter().map(|c| (*c).to_owned()).collect(),
        shape,
        source: "fer2013",
        source_sha256: digest,
    };
    let manifest = staging.write_dataset(target, &splits, options)?;
    Ok(ImportReport { manifest, skipped: tally.skipped, rows_read: tally.rows, ignored: 0 })
}

#[derive(Default)]
struct Tally {
    rows: u64,
    skipped: Vec<String>,
}

/// Lines `first_line..` of the file: `text[ends[i - 1]..ends[i]]` is line `first_line + i`.
struct LineChunk {
    first_line: u64,
    text: Vec<u8>,
    ends: Vec<usize>,
}

impl LineChunk {
    fn line(&self, index: usize) -> &[u8] {
        let start = if index == 0 { 0 } else { self.ends[index - 1] };
        self.text[start..self.ends[index]].trim_ascii_end()
    }
}

/// The reading thread: cuts the text into chunks until the end or until the consumer hangs
/// up; returns the hex sha256 of everything read.
fn read_chunks(mut reader: BufReader<HashingReader>, sender: SyncSender<std::io::Result<LineChunk>>) -> String {
    let mut next_line = 2;
    let mut capacity = 0;
    loop {
        let mut chunk = LineChunk { first_line: next_line, text: Vec::with_capacity(capacity), ends: Vec::with_capacity(CHUNK_LINES) };
        while chunk.ends.len() < CHUNK_LINES {
            match reader.read_until(b'\n', &mut chunk.text) {
                Ok(0) => break,
                Ok(_) => chunk.ends.push(chunk.text.len()),
                Err(error) => {
                    let _ = sender.send(Err(error));
                    return String::new();
                }
            }
        }
        next_line += chunk.ends.len() as u64;
        capacity = chunk.text.len();
        let last = chunk.ends.len() < CHUNK_LINES;
        if (!chunk.ends.is_empty() && sender.send(Ok(chunk)).is_err()) || last {
            break;
        }
    }
    reader.into_inner().finish()
}

/// The consuming side: parses each chunk in parallel and stages its good rows in order.
fn consume_chunks(
    receiver: Receiver<std::io::Result<LineChunk>>,
    csv: &Path,
    columns: &Columns,
    options: &SplitOptions,
    staging: &mut Staging,
    tally: &mut Tally,
    progress: &dyn Fn(u64),
) -> Result<(), ImportError> {
    for chunk in receiver {
        let chunk = chunk.map_err(ImportError::io("read", csv))?;
        let mut pixels = vec![0u8; chunk.ends.len() * PIXELS];
        let rows: Vec<Result<Option<Row>, String>> =
            pixels.par_chunks_mut(PIXELS).enumerate().map(|(index, target)| parse_row(chunk.line(index), columns, target)).collect();
        for (index, row) in rows.into_iter().enumerate() {
            let line = chunk.first_line + index as u64;
            let row = match row {
                Ok(None) => continue,
                Ok(Some(row)) => row,
                Err(problem) if options.skip_bad => {
                    tally.rows += 1;
                    tally.skipped.push(format!("line {line}: {problem}"));
                    continue;
                }
                Err(problem) => return Err(ImportError::Row { path: csv.to_path_buf(), line, problem }),
            };
            let sample_id = tally.rows as i64;
            tally.rows += 1;
            let (given_val, given_test) = (row.usage == Usage::PublicTest, row.usage == Usage::PrivateTest);
            let staged = StagedSample { sample_id, label: row.emotion, given_val, given_test, video_id: None, frame_index: None };
            staging.push(staged, &pixels[index * PIXELS..(index + 1) * PIXELS])?;
        }
        progress(tally.rows);
    }
    Ok(())
}

/// Parses a FER2013 CSV held in memory with the importer's own parsers, writing nothing:
/// the number of rows [`import_fer2013`] would import, or the first bad line's number and
/// problem, as its error (without `skip_bad`) would name them. The entry point of the
/// property tests and of the `fer2013_csv` fuzz target.
pub fn check_fer2013_text(text: &[u8]) -> Result<u64, (u64, String)> {
    let mut lines = text.split(|b| *b == b'\n');
    let columns = Columns::from_header(lines.next().unwrap_or_default()).map_err(|problem| (1, problem))?;
    let mut pixels = vec![0u8; PIXELS];
    let mut rows = 0;
    for (index, line) in lines.enumerate() {
        match parse_row(line, &columns, &mut pixels) {
            Ok(Some(_)) => rows += 1,
            Ok(None) => {}
            Err(problem) => return Err((index as u64 + 2, problem)),
        }
    }
    Ok(rows)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Usage {
    Training,
    PublicTest,
    PrivateTest,
}

struct Row {
    emotion: i64,
    usage: Usage,
}

/// Where the columns are, from the header line.
#[derive(Debug)]
struct Columns {
    count: usize,
    emotion: usize,
    pixels: usize,
    usage: Option<usize>,
}

impl Columns {
    fn from_header(line: &[u8]) -> Result<Self, String> {
        let line = line.strip_prefix(b"\xef\xbb\xbf").unwrap_or(line).trim_ascii();
        let names: Vec<String> = line.split(|b| *b == b',').map(|f| String::from_utf8_lossy(unquote(f)).to_ascii_lowercase()).collect();
        let find = |name: &str| names.iter().position(|n| n == name);
        match (find("emotion"), find("pixels")) {
            (Some(emotion), Some(pixels)) => Ok(Self { count: names.len(), emotion, pixels, usage: find("usage") }),
            _ => Err(format!("expected a header naming the emotion, pixels and Usage columns, found {:?}", String::from_utf8_lossy(line))),
        }
    }
}

/// Parses one line into `pixels`; `Ok(None)` for a blank line.
fn parse_row(line: &[u8], columns: &Columns, pixels: &mut [u8]) -> Result<Option<Row>, String> {
    if line.trim_ascii().is_empty() {
        return Ok(None);
    }
    let fields: Vec<&[u8]> = line.split(|b| *b == b',').map(unquote).collect();
    if fields.len() != columns.count {
        return Err(format!("has {} columns, expected {}", fields.len(), columns.count));
    }
    let text = |field: &[u8]| String::from_utf8_lossy(field).into_owned();
    let emotion_field = fields[columns.emotion];
    let emotion: i64 =
        std::str::from_utf8(emotion_field).ok().and_then(|s| s.parse().ok()).ok_or_else(|| format!("emotion {:?} is not a number", text(emotion_field)))?;
    if !(0..CLASS_NAMES.len() as i64).contains(&emotion) {
        return Err(format!("emotion {emotion} is outside 0..{}", CLASS_NAMES.len()));
    }
    let usage = match columns.usage.map(|column| fields[column]) {
        None | Some(b"Training") => Usage::Training,
        Some(b"PublicTest") => Usage::PublicTest,
        Some(b"PrivateTest") => Usage::PrivateTest,
        Some(other) => return Err(format!("unknown Usage {:?}, expected Training, PublicTest or PrivateTest", text(other))),
    };
    parse_pixels(fields[columns.pixels], pixels)?;
    Ok(Some(Row { emotion, usage }))
}

/// Parses space-separated values 0..=255 into `pixels`, which must be filled exactly.
fn parse_pixels(field: &[u8], pixels: &mut [u8]) -> Result<(), String> {
    let mut count = 0usize;
    let mut value = 0u32;
    let mut token_start = None;
    let mut emit = |start: usize, end: usize, value: u32, count: &mut usize| -> Result<(), String> {
        if value > 255 {
            return Err(format!("pixel value {} is above 255", String::from_utf8_lossy(&field[start..end])));
        }
        if let Some(slot) = pixels.get_mut(*count) {
            *slot = value as u8;
        }
        *count += 1;
        Ok(())
    };
    for (at, &byte) in field.iter().enumerate() {
        match byte {
            b'0'..=b'9' => {
                if token_start.is_none() {
                    token_start = Some(at);
                    value = 0;
                }
                value = (value * 10 + u32::from(byte - b'0')).min(1_000_000);
            }
            b' ' | b'\t' => {
                if let Some(start) = token_start.take() {
                    emit(start, at, value, &mut count)?;
                }
            }
            _ => {
                let start = field[..at].iter().rposition(|b| b.is_ascii_whitespace()).map_or(0, |p| p + 1);
                let end = field[at..].iter().position(|b| b.is_ascii_whitespace()).map_or(field.len(), |p| at + p);
                return Err(format!("pixels has a non-numeric value {:?}", String::from_utf8_lossy(&field[start..end])));
            }
        }
    }
    if let Some(start) = token_start {
        emit(start, field.len(), value, &mut count)?;
    }
    if count != PIXELS {
        return Err(format!("pixels has {count} values, expected {PIXELS}"));
    }
    Ok(())
}

/// A field without surrounding whitespace and double quotes.
fn unquote(field: &[u8]) -> &[u8] {
    let field = field.trim_ascii();
    field.strip_prefix(b"\"").and_then(|f| f.strip_suffix(b"\"")).unwrap_or(field).trim_ascii()
}

/// The file, decompressed when it is gzipped (by extension or magic bytes).
fn open_maybe_gzipped(path: &Path) -> Result<Box<dyn Read + Send>, ImportError> {
    let file = File::open(path).map_err(ImportError::io("open", path))?;
    let mut buffered = BufReader::with_capacity(1 << 20, file);
    let magic = buffered.fill_buf().map_err(ImportError::io("read", path))?;
    let gzipped = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gz")) || magic.starts_with(&[0x1f, 0x8b]);
    Ok(if gzipped { Box::new(MultiGzDecoder::new(buffered)) } else { Box::new(buffered) })
}

/// Hashes everything read through it.
struct HashingReader {
    inner: Box<dyn Read + Send>,
    hasher: Sha256,
}

impl HashingReader {
    fn new(inner: Box<dyn Read + Send>) -> Self {
        Self { inner, hasher: Sha256::new() }
    }

    fn finish(self) -> String {
        hex(&self.hasher.finalize())
    }
}

impl Read for HashingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
#[path = "fer2013_tests.rs"]
mod tests;
