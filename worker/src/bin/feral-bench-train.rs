//! `feral-bench-train`: times the worker's training step and its batch loader on 48×48
//! grayscale images. `--mode step` (the default) runs the step of `train::train` alone
//! (forward, cross-entropy, backward, AdamW) on the default compact CNN over ready
//! batches; `--mode loader` pulls augmented batches from the loader without training;
//! `--mode pipeline` trains on batches from the loader, as a task does. Each prints the
//! median images/s over `--repeats` timed runs of `--steps` steps after `--warmup` steps.
//! `scripts/bench_train_torch.py` and `scripts/bench_loader_torch.py` measure the same in
//! PyTorch; `scripts/bench-train.sh` and `scripts/bench-loader.sh` print both side by side.
//! The images come from `--data` (a safetensors file with `images` u8 N×H×W×C and `labels`
//! i64, which `--write-data` writes from the synthetic generator at `--size` and
//! `--channels`), so both sides train on the same bytes. `--arch resnet18 --device cuda:0`
//! times ResNet-18 on a GPU (`scripts/gpu-check.sh`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, ensure, Context};
use clap::{Parser, ValueEnum};
use feral_common::dataset::{ImageShape, ShardData};
use feral_common::spec::{Arch, ModelSpec, Precision, Sampling, TrainSpec};
use feral_common::synthetic::{generate, SyntheticConfig};
use feral_worker::train::precision::Autocast;
use feral_worker::train::{build_model, to_tensors, use_channels_last, Augmentation, Cursor, Loader, LoaderConfig};
use tch::nn::{self, ModuleT, OptimizerConfig};
use tch::{Device, Kind, Tensor};

/// How batch images lie in memory (both are `[N, C, H, W]` tensors).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Layout {
    /// N×H×W×C, as the worker's loader makes them.
    ChannelsLast,
    /// N×C×H×W.
    Nchw,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    Step,
    Loader,
    Pipeline,
}

#[derive(Debug, Parser)]
#[command(about = "Training-step and batch-loader throughput of Feral's worker")]
struct Args {
    #[arg(long, value_enum, default_value = "step")]
    mode: Mode,
    /// libtorch intra-op threads.
    #[arg(long, default_value_t = 1)]
    threads: i32,
    /// Loader threads (modes loader and pipeline).
    #[arg(long, default_value_t = 1)]
    loader_threads: usize,
    /// Timed steps (or batches) per repeat.
    #[arg(long, default_value_t = 30)]
    steps: usize,
    /// Untimed steps before the timed repeats.
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Memory layout of the ready batches of `--mode step`.
    #[arg(long, value_enum, default_value = "channels-last")]
    layout: Layout,
    /// Arithmetic of the forward pass (`bf16`: autocast, as `[train] precision = "bf16"`).
    #[arg(long, value_enum, default_value = "fp32")]
    precision: PrecisionArg,
    /// Synthetic images to generate when no --data is given.
    #[arg(long, default_value_t = 2048)]
    samples: usize,
    /// Images and labels to use (safetensors: `images` u8 N×H×W×C, `labels` i64 N).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Write the synthetic images to this file (for the PyTorch side) and exit.
    #[arg(long)]
    write_data: Option<PathBuf>,
    /// Print one CSV row (with a header) instead of a sentence.
    #[arg(long)]
    csv: bool,
    /// Where `--mode step` trains: `cpu` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// The model of `--mode step`: the default compact CNN, or ResNet-18.
    #[arg(long, value_enum, default_value = "compact-cnn")]
    arch: ArchArg,
    /// Side of the images `--write-data` (or the default data) generates.
    #[arg(long, default_value_t = 48)]
    size: u32,
    /// Channels of those images: 1 (gray) or 3 (the gray face in every channel).
    #[arg(long, default_value_t = 1)]
    channels: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ArchArg {
    CompactCnn,
    Resnet18,
}

/// `cpu` or `cuda:N` as a libtorch device.
fn device(text: &str) -> anyhow::Result<Device> {
    match text.parse::<feral_common::task::Device>().map_err(anyhow::Error::msg)? {
        feral_common::task::Device::Cpu => Ok(Device::Cpu),
        feral_common::task::Device::Cuda(index) => {
            ensure!(tch::Cuda::is_available(), "--device {text}: libtorch sees no CUDA device");
            Ok(Device::Cuda(index as usize))
        }
    }
}

const CLASSES: i64 = 7;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(args.batch > 0 && args.steps > 0 && args.repeats > 0, "--batch, --steps and --repeats must be at least 1");
    ensure!(args.channels == 1 || args.channels == 3, "--channels must be 1 or 3, got {}", args.channels);
    ensure!((16..=256).contains(&args.size), "--size must be within 16..=256, got {}", args.size);
    if let Some(path) = &args.write_data {
        return write_data(path, args.samples, args.size, args.channels);
    }
    tch::set_num_threads(args.threads);
    let data = Arc::new(match &args.data {
        Some(path) => read_data(path)?,
        None => synthetic(args.samples, args.size, args.channels),
    });
    let rates = match args.mode {
        Mode::Step => time_steps(&args, &data)?,
        Mode::Loader => time_loader(&args, &data)?,
        Mode::Pipeline => time_pipeline(&args, &data)?,
    };
    let mut sorted = rates.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let mode = format!("{:?}", args.mode).to_lowercase();
    if args.csv {
        let mut layout = if args.layout == Layout::Nchw { "nchw" } else { "channels-last" }.to_owned();
        if args.precision == PrecisionArg::Bf16 {
            layout.push_str("/bf16");
        }
        println!("implementation,mode,layout,threads,loader_threads,batch,steps,repeats,images_per_s,min,max");
        println!(
            "feral,{mode},{layout},{},{},{},{},{},{median:.1},{:.1},{:.1}",
            args.threads,
            args.loader_threads,
            args.batch,
            args.steps,
            args.repeats,
            sorted[0],
            sorted[sorted.len() - 1]
        );
    } else {
        println!("{mode}: {median:.1} images/s (median of {rates:.1?}), {} intra-op threads, {} loader threads", args.threads, args.loader_threads);
    }
    Ok(())
}

fn synthetic(samples: usize, size: u32, channels: u32) -> ShardData {
    let config = SyntheticConfig { samples, image_size: size, ..SyntheticConfig::default() };
    let mut data = ShardData::empty(ImageShape { height: size, width: size, channels });
    for (id, sample) in generate(&config, 0..samples).into_iter().enumerate() {
        let pixels: Vec<u8> = sample.pixels.iter().flat_map(|&p| std::iter::repeat_n(p, channels as usize)).collect();
        data.images.extend_from_slice(&pixels);
        data.labels.push(sample.label);
        data.sample_ids.push(id as i64);
    }
    data
}

fn write_data(path: &PathBuf, samples: usize, size: u32, channels: u32) -> anyhow::Result<()> {
    let data = synthetic(samples, size, channels);
    let images = Tensor::from_slice(&data.images.to_vec()).view([samples as i64, i64::from(size), i64::from(size), i64::from(channels)]);
    let labels = Tensor::from_slice(&data.labels);
    Tensor::write_safetensors(&[("images", images), ("labels", labels)], path).with_context(|| format!("cannot write {}", path.display()))
}

fn read_data(path: &PathBuf) -> anyhow::Result<ShardData> {
    let tensors = Tensor::read_safetensors(path).with_context(|| format!("cannot read {}", path.display()))?;
    let find =
        |name: &str| tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t.shallow_clone()).with_context(|| format!("{} has no `{name}`", path.display()));
    let (images, labels) = (find("images")?, find("labels")?);
    let size = images.size();
    let [n, h, w, c] = size[..] else { bail!("`images` must be N×H×W×C, is {size:?}") };
    let mut data = ShardData::empty(ImageShape { height: h as u32, width: w as u32, channels: c as u32 });
    data.images.extend_from_slice(&Vec::<u8>::try_from(images.flatten(0, -1).to_kind(Kind::Uint8))?);
    data.labels = Vec::try_from(labels.to_kind(Kind::Int64))?;
    data.sample_ids = (0..n).collect();
    ensure!(data.labels.len() == n as usize, "`labels` must have one label per image");
    Ok(data)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum PrecisionArg {
    Fp32,
    Bf16,
}

/// The default compact CNN (or ResNet-18) with AdamW as a task builds them.
struct Trainer {
    net: Box<dyn ModuleT>,
    optimizer: nn::Optimizer,
    precision: Precision,
    device: Device,
    _vs: nn::VarStore,
}

impl Trainer {
    fn new(shape: ImageShape, precision: PrecisionArg, arch: ArchArg, device: Device) -> anyhow::Result<Self> {
        tch::manual_seed(7);
        let vs = nn::VarStore::new(device);
        let image = [i64::from(shape.channels), i64::from(shape.height), i64::from(shape.width)];
        let arch = if arch == ArchArg::Resnet18 { Arch::Resnet18 } else { Arch::CompactCnn };
        let net = build_model(&vs.root(), &ModelSpec { arch, ..ModelSpec::default() }, image, CLASSES);
        if device.is_cuda() {
            // As a task does on a GPU.
            use_channels_last(&vs);
        }
        let train = TrainSpec::default();
        let optimizer = nn::AdamW { wd: train.weight_decay, ..Default::default() }.build(&vs, train.learning_rate)?;
        let precision = if precision == PrecisionArg::Bf16 { Precision::Bf16 } else { Precision::Fp32 };
        Ok(Self { net, optimizer, precision, device, _vs: vs })
    }

    /// The step of `train::train`: forward, cross-entropy, backward, AdamW.
    fn step(&mut self, images: &Tensor, labels: &Tensor) -> f64 {
        let autocast = Autocast::enter(self.precision, self.device);
        let logits = self.net.forward_t(images, true).to_kind(Kind::Float);
        let loss = logits.cross_entropy_loss::<Tensor>(labels, None, tch::Reduction::Mean, -100, 0.0);
        drop(autocast);
        self.optimizer.zero_grad();
        loss.backward();
        self.optimizer.step();
        loss.double_value(&[])
    }
}

/// Images per second of each repeat: `run(count)` does `count` steps.
fn repeat(args: &Args, mut run: impl FnMut(usize) -> anyhow::Result<()>) -> anyhow::Result<Vec<f64>> {
    run(args.warmup)?;
    let mut rates = Vec::with_capacity(args.repeats);
    for _ in 0..args.repeats {
        let started = Instant::now();
        run(args.steps)?;
        rates.push((args.steps * args.batch) as f64 / started.elapsed().as_secs_f64());
    }
    Ok(rates)
}

/// Ready batches `k·batch ..` of the data in order (wrapping), as the PyTorch side uses.
fn time_steps(args: &Args, data: &ShardData) -> anyhow::Result<Vec<f64>> {
    let device = device(&args.device)?;
    let batches: Vec<(Tensor, Tensor)> = (0..16)
        .map(|k| {
            let indices: Vec<usize> = (0..args.batch).map(|i| (k * args.batch + i) % data.len()).collect();
            let (images, labels) = to_tensors(data, &indices, &data.labels, device, None);
            if args.layout == Layout::Nchw {
                let mut nchw = Tensor::zeros(images.size(), (Kind::Float, device));
                nchw.copy_(&images);
                (nchw, labels)
            } else {
                (images, labels)
            }
        })
        .collect();
    let mut trainer = Trainer::new(data.shape, args.precision, args.arch, device)?;
    let mut next = 0;
    repeat(args, |count| {
        for _ in 0..count {
            let (images, labels) = &batches[next % batches.len()];
            trainer.step(images, labels);
            next += 1;
        }
        Ok(())
    })
}

fn loader(args: &Args, data: &Arc<ShardData>) -> anyhow::Result<Loader> {
    let steps_per_epoch = 1000;
    let batches = args.warmup + args.steps * args.repeats;
    let config = LoaderConfig {
        seed: 7,
        round: 0,
        rank: 0,
        world: 1,
        full_world: 1,
        batch: args.batch,
        pseudo_batch: 0,
        steps_per_epoch,
        last_epoch: batches.div_ceil(steps_per_epoch) as u32,
        classes: CLASSES as usize,
        sampling: Sampling::ClassUniform,
        class_weights: None,
        augmentation: Some(Augmentation::default()),
        strong: None,
        strong_labelled: false,
        pool_batch: 0,
        threads: args.loader_threads,
        depth: LoaderConfig::DEFAULT_DEPTH,
    };
    Ok(Loader::start(config, Arc::clone(data), None, None, Cursor::new(1, 0))?)
}

fn time_loader(args: &Args, data: &Arc<ShardData>) -> anyhow::Result<Vec<f64>> {
    let mut loader = loader(args, data)?;
    repeat(args, |count| {
        for _ in 0..count {
            let batch = loader.next_batch()?;
            std::hint::black_box(&batch);
        }
        Ok(())
    })
}

fn time_pipeline(args: &Args, data: &Arc<ShardData>) -> anyhow::Result<Vec<f64>> {
    ensure!(args.device == "cpu", "--mode pipeline runs on the CPU only");
    let mut loader = loader(args, data)?;
    let mut trainer = Trainer::new(data.shape, args.precision, args.arch, Device::Cpu)?;
    repeat(args, |count| {
        for _ in 0..count {
            let batch = loader.next_batch()?;
            trainer.step(&batch.images, &batch.labels);
        }
        Ok(())
    })
}
