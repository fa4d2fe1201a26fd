//! `feral-model`: use a model a job saved, on this machine's CPU. `feral predict`, `feral
//! eval` and `feral export` run it; it links libtorch, which the `feral` CLI does not.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use feral_common::dataset::Split;
use feral_worker::saved::{self, Evaluation, Prediction, SavedModel};

/// Use a saved model: predict, evaluate, export.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Each input's class, its probability and every class's probability.
    Predict {
        /// The model directory (with model.json), or a file in it.
        model: PathBuf,
        /// Image files (JPEG, PNG), folders of them, or a prepared dataset directory.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// The split of a prepared dataset to predict [default: test, else val].
        #[arg(long)]
        split: Option<SplitArg>,
        /// Resize and convert images of another size or colour to the model's input.
        #[arg(long)]
        resize: bool,
        /// How to print the predictions.
        #[arg(long, default_value = "table")]
        format: Format,
    },
    /// Accuracy, macro-F1, per-class F1 and the confusion matrix on a prepared dataset,
    /// its classes matched to the model's by name.
    Eval {
        /// The model directory (with model.json), or a file in it.
        model: PathBuf,
        /// A prepared dataset directory (with manifest.json).
        dataset: PathBuf,
        /// The split to evaluate on [default: test, else val].
        #[arg(long)]
        split: Option<SplitArg>,
        /// How to print the metrics (csv: the confusion matrix with per-class F1).
        #[arg(long, default_value = "table")]
        format: Format,
    },
    /// Write the model in another format (ONNX), converted by PyTorch.
    Export {
        /// The model directory (with model.json), or a file in it.
        model: PathBuf,
        /// The format to write.
        #[arg(long, value_enum)]
        format: ExportFormat,
        /// Where to write it [default: model.onnx in the model's directory].
        #[arg(long)]
        out: Option<PathBuf>,
        /// A Python with PyTorch [default: FERAL_PYTHON, else the project's venv].
        #[arg(long)]
        python: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum SplitArg {
    Train,
    Val,
    Test,
}

impl From<SplitArg> for Split {
    fn from(split: SplitArg) -> Self {
        match split {
            SplitArg::Train => Split::Train,
            SplitArg::Val => Split::Val,
            SplitArg::Test => Split::Test,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, ValueEnum)]
enum Format {
    Table,
    Csv,
    Json,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ExportFormat {
    Onnx,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Command::Predict { model, inputs, split, resize, format } => {
            let model = SavedModel::open(&model)?;
            let predictions = match inputs.as_slice() {
                [dataset] if dataset.join(feral_common::dataset::MANIFEST_FILE).is_file() => model.predict_split(dataset, pick_split(dataset, split)?)?,
                _ => model.predict_images(&inputs, resize)?,
            };
            print(&predictions_text(&predictions, model.classes(), format)?)?;
        }
        Command::Eval { model, dataset, split, format } => {
            let evaluation = SavedModel::open(&model)?.evaluate(&dataset, pick_split(&dataset, split)?)?;
            match format {
                Format::Json => print(&(serde_json::to_string_pretty(&evaluation)? + "\n"))?,
                Format::Table | Format::Csv => print(&evaluation_text(&evaluation, format))?,
            }
        }
        Command::Export { model, format: ExportFormat::Onnx, out, python } => {
            let model = SavedModel::open(&model)?;
            let out = out.unwrap_or_else(|| model.dir().join("model.onnx"));
            model.export_onnx(&python.unwrap_or_else(saved::default_python), &out)?;
            print(&format!(
                "wrote {} (input `images` [N, {}, {}, {}], output `logits`)\n",
                out.display(),
                model.shape().channels,
                model.shape().height,
                model.shape().width
            ))?;
        }
    }
    Ok(())
}

/// The split asked for, else the dataset's `test` split where it has one, else `val`.
fn pick_split(dataset: &std::path::Path, split: Option<SplitArg>) -> anyhow::Result<Split> {
    if let Some(split) = split {
        return Ok(split.into());
    }
    let manifest = feral_common::dataset::Manifest::load(dataset)?;
    Ok(if manifest.splits.contains_key(&Split::Test) { Split::Test } else { Split::Val })
}

/// Writes `text` to stdout; a reader that went away (`| head`) ends the output quietly.
fn print(text: &str) -> std::io::Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        written => written,
    }
}

fn predictions_text(predictions: &[Prediction], classes: &[String], format: Format) -> anyhow::Result<String> {
    let labelled = predictions.iter().any(|p| p.label.is_some());
    let mut out = String::new();
    match format {
        Format::Json => out = serde_json::to_string_pretty(predictions)? + "\n",
        Format::Csv => {
            let mut header = vec!["input".to_owned()];
            if labelled {
                header.push("label".into());
            }
            header.extend(["class".into(), "probability".into()]);
            header.extend(classes.iter().map(|c| format!("p_{c}")));
            out.push_str(&(header.join(",") + "\n"));
            for p in predictions {
                let mut row = vec![csv_field(&p.input)];
                if labelled {
                    row.push(p.label.clone().unwrap_or_default());
                }
                row.extend([p.class.clone(), format!("{:.6}", p.probability)]);
                row.extend(p.probabilities.iter().map(|v| format!("{v:.6}")));
                out.push_str(&(row.join(",") + "\n"));
            }
        }
        Format::Table => {
            let width = predictions.iter().map(|p| p.input.chars().count()).max().unwrap_or(5).max(5);
            out.push_str(&format!(
                "{:<width$}  {}{:<10} {:>6}\n",
                "INPUT",
                if labelled { format!("{:<10} ", "LABEL") } else { String::new() },
                "CLASS",
                "PROB"
            ));
            for p in predictions {
                let label = if labelled { format!("{:<10} ", p.label.as_deref().unwrap_or("-")) } else { String::new() };
                out.push_str(&format!("{:<width$}  {label}{:<10} {:>6.3}\n", p.input, p.class, p.probability));
            }
        }
    }
    Ok(out)
}

/// A CSV field, quoted when it holds a comma, quote or line break.
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

fn evaluation_text(e: &Evaluation, format: Format) -> String {
    let n = e.classes.len();
    if format == Format::Csv {
        let mut out = String::from("truth,");
        out.push_str(&(e.classes.join(",") + ",f1\n"));
        for (t, name) in e.classes.iter().enumerate() {
            let row: Vec<String> = e.confusion[t * n..(t + 1) * n].iter().map(u64::to_string).collect();
            out.push_str(&format!("{name},{},{:.6}\n", row.join(","), e.per_class_f1[t]));
        }
        return out;
    }
    let mut out =
        format!("{} `{}` split: {} samples, accuracy {:.2}%, macro-F1 {:.4}\n", e.dataset.display(), e.split, e.samples, 100.0 * e.accuracy, e.macro_f1);
    let width = e.classes.iter().map(String::len).max().unwrap_or(5).max(5);
    out.push_str(&format!("{:<width$} {:>6}  confusion (rows: truth, columns: predicted)\n", "CLASS", "F1"));
    out.push_str(&format!("{:<width$} {:>6} ", "", ""));
    for name in &e.classes {
        out.push_str(&format!(" {:>8}", name.chars().take(8).collect::<String>()));
    }
    out.push('\n');
    for (t, name) in e.classes.iter().enumerate() {
        out.push_str(&format!("{name:<width$} {:>6.4} ", e.per_class_f1[t]));
        for count in &e.confusion[t * n..(t + 1) * n] {
            out.push_str(&format!(" {count:>8}"));
        }
        out.push('\n');
    }
    out
}
