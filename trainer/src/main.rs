//! `dino`: DINO self-supervised ViTs from the command line.

mod augment;
mod checkpoint;
mod commands;
mod config;
mod data;
mod device;
mod ema;
mod images;
mod knn;
mod loader;
mod loss;
mod model;
mod npy;
mod optim;
mod plot;
mod profile;
mod scaler;
mod schedule;
mod step;
mod train;
mod fsutil;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "dino", version, about = "DINO (self-distillation with no labels) in Rust on Burn")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Self-supervised DINO training (official main_dino.py flags); without --data_path it
    /// trains on the embedded Fashion-MNIST subset, then evaluates k-NN and draws attention maps.
    Train(Box<commands::train::TrainArgs>),
    /// Weighted k-NN evaluation (official eval_knn.py).
    Knn(commands::knn::KnnArgs),
    /// Linear probe on frozen features (official eval_linear.py).
    Linear(commands::linear::LinearArgs),
    /// Fetch and unpack a dataset (resumable, checksum-verified).
    Download(commands::download::DownloadArgs),
    /// Per-head attention maps of one layer (default: the last) for one image.
    Attention(commands::attention::AttentionArgs),
    /// PCA of the last layer's patch features as RGB, fitted on one or several pictures.
    Pca(commands::views::PcaArgs),
    /// Cosine similarity of one patch's features with every patch of a picture.
    Similarity(commands::views::SimilarityArgs),
    /// Attention of every frame of a clip (frames folder, GIF, or video via ffmpeg) as an animated GIF.
    Video(commands::video::VideoArgs),
    /// CLS features of images as a .npy matrix.
    Embed(commands::embed::EmbedArgs),
    /// Convert weights to one compact safetensors file (the web page's format).
    Export(commands::export::ExportArgs),
    /// Our side of the benchmarks in bench/ (training step, inference, augmentation).
    Bench(commands::bench::BenchArgs),
}

/// mimalloc reuses freed tensor buffers; glibc handed large ones back to the OS at once (page
/// faults plus page zeroing: 6% of a training step). Measured together with the fused autodiff
/// nodes and the AVX-512 kernels (BENCHMARKS.md, "Fused autodiff nodes, AVX-512 kernels, mimalloc").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (its index in `mi_option_t`, mimalloc.h v2 and v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() {
    // Keep freed pages mapped instead of returning them to the OS 10 ms later: a step frees and
    // re-allocates the same large tensor buffers, and each page handed back costs a page fault
    // and the kernel's zeroing when it is touched again (13% of a small step under `perf`;
    // measured +8% images/s, BENCHMARKS.md). The resident set stays at the peak, which is what
    // a training process reaches anyway.
    // SAFETY: sets a process-wide allocator option, before any thread exists.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    let cli = Cli::parse();
    // The command runs as a job of rayon's pool, the pool Burn's CPU kernels split their work
    // on: a kernel that splits (a large matrix product, softmax, layer norm) then shares it with
    // the idle worker by work stealing, where from the main thread each kernel was handed to the
    // pool and the main thread put to sleep until it was done (one futex sleep and wake per
    // kernel: 34K context switches in 8 small-preset steps, 500 after; BENCHMARKS.md). The
    // workers get the main thread's 8 MiB stack; the pool's size stays rayon's (one worker per
    // core, or RAYON_NUM_THREADS).
    // A pool that cannot be built (only if one already exists) keeps rayon's default.
    let _ = rayon::ThreadPoolBuilder::new().stack_size(8 << 20).build_global();
    let result = rayon::scope(|_| match &cli.command {
        Command::Train(a) => commands::train::run(a),
        Command::Knn(a) => commands::knn::run(a),
        Command::Linear(a) => commands::linear::run(a).map(|_| ()),
        Command::Download(a) => commands::download::run(a),
        Command::Attention(a) => commands::attention::run(a),
        Command::Pca(a) => commands::views::run_pca(a),
        Command::Similarity(a) => commands::views::run_similarity(a),
        Command::Video(a) => commands::video::run(a),
        Command::Embed(a) => commands::embed::run(a),
        Command::Export(a) => commands::export::run(a),
        Command::Bench(a) => commands::bench::run(a),
    });
    if let Err(e) = result {
        eprintln!("error: {e}");
        // A run that stopped itself (non-finite loss) exits 1; bad input (one line naming the
        // file and the problem) exits 2.
        let code = if e.downcast_ref::<train::TrainingStopped>().is_some() { 1 } else { 2 };
        std::process::exit(code);
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every flag of every subcommand says what it does (`dino X --help`).
    #[test]
    fn every_flag_has_help() {
        let cli = super::Cli::command();
        let mut missing = Vec::new();
        for sub in cli.get_subcommands() {
            for arg in sub.get_arguments() {
                let id = arg.get_id().as_str();
                if !["help", "version"].contains(&id) && arg.get_help().is_none_or(|h| h.to_string().trim().is_empty()) {
                    missing.push(format!("dino {} --{id}", sub.get_name()));
                }
            }
        }
        assert!(missing.is_empty(), "flags without help: {missing:?}");
    }
}
