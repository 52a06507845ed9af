//! `dino train`: self-distillation with no labels (official main_dino.py train_dino).

use std::path::PathBuf;

use crate::config::{Preset, TrainConfig};
use crate::device::DeviceChoice;
use crate::train::{format_knn, top1s, train};

/// The flags of `dino train`. Every setting flag is a key of [`TrainConfig`] under the same
/// name: the flags given are serialised to a table and laid over the preset and the `--config`
/// file, and the result is read back as a `TrainConfig`, which rejects unknown keys (so no flag
/// can be silently ignored; `every_setting_flag_is_a_config_key` checks the names).
#[derive(clap::Args, Debug, Default, serde::Serialize)]
#[command(rename_all = "snake_case")]
pub struct TrainArgs {
    /// TOML file with any of the settings below (flags given here win).
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Starting values: small (28 px, the default without --data_path), tiny-imagenet, imagenet.
    #[arg(long, value_enum)]
    #[serde(skip)]
    pub preset: Option<Preset>,
    /// vit_tiny, vit_small, vit_base (official, 64-dim heads) or custom (--embed_dim --depth --num_heads).
    #[arg(long)] #[serde(skip_serializing_if = "Option::is_none")] pub arch: Option<String>,
    /// Side of the square patches in pixels (official 16; 8 gives finer maps at 4x the cost).
    #[arg(long)] #[serde(skip_serializing_if = "Option::is_none")] pub patch_size: Option<usize>,
    /// Dimensionality of the DINO head output K (official 65536; smaller for small data).
    #[arg(long)] #[serde(skip_serializing_if = "Option::is_none")] pub out_dim: Option<usize>,
    /// Weight-normalise the head's last layer with a fixed norm (official true; false learns better but can be less stable).
    #[arg(long)] #[serde(skip_serializing_if = "Option::is_none")] pub norm_last_layer: Option<bool>,
    /// Stochastic depth rate of the student (official 0.1).
    #[arg(long)] #[serde(skip_serializing_if = "Option::is_none")] pub drop_path_rate: Option<f64>,
    /// Width of a custom ViT (--arch custom).
    #[arg(long)] #[serde(skip_serializing_if = "Option::is_none")] pub embed_dim: Option<usize>,
    /// Blocks of a custom ViT (--arch custom).
    #[arg(long)] #[serde(skip_serializing_if = "Option::is_none")] pub depth: Option<usize>,
    /// Attention heads of a custom ViT; must divide --embed_dim.
    #[arg(long)] #[serde(skip_serializing_if = "Option::is_none")] pub num_heads: Option<usize>,
    /// Hidden width of the DINO head MLP (official 2048).
    #[arg(long)] #[serde(skip_serializing_if = "Option::is_none")] pub head_hidden_dim: Option<usize>,
    /// Bottleneck width of the DINO head (official 256).
    #[arg(long)] #[serde(skip_serializing_if = "Option::is_none")] pub head_bottleneck_dim: Option<usize>,
    /// Base EMA momentum of the teacher, raised to 1 by a cosine (official 0.996; lower, e.g. 0.99, for short runs and small batches).
    #[arg(long)] #[serde(skip_serializing_if = "Option::is_none")] pub momentum_teacher: Option<f64>,
    /// Teacher temperature at the start of its warm-up (official 0.04; lower it if the loss does not fall).
    #[arg(long)] #[serde(skip_serializing_if = "Option::is_none")] pub warmup_teacher_temp: Option<f64>,
    /// Teacher temperature after the warm-up (official 0.04; above 0.07 is unstable).
    #[arg(long)] #[serde(skip_serializing_if = "Option::is_none")] pub teacher_temp: Option<f64>,
    /// Epochs of linear teacher-temperature warm-up (official 0 here; 30 in the paper's long runs).
    #[arg(long)] #[serde(skip_serializing_if = "Option::is_none")] pub warmup_teacher_temp_epochs: Option<usize>,
    /// Initial AdamW weight decay (official 0.04), cosine to --weight_decay_end.
    #[arg(long)] #[serde(skip_serializing_if = "Option::is_none")] pub weight_decay: Option<f64>,
    /// Final weight decay (official 0.4).
    #[arg(long)] #[serde(skip_serializing_if = "Option::is_none")] pub weight_decay_end: Option<f64>,
    /// Per-tensor gradient norm clipping (official 3.0; 0 disables).
    #[arg(long)] #[serde(skip_serializing_if = "Option::is_none")] pub clip_grad: Option<f64>,
    /// Pictures per step (official 64 per GPU).
    #[arg(long)] #[serde(skip_serializing_if = "Option::is_none")] pub batch_size_per_gpu: Option<usize>,
    /// Passes over the training pictures (official 100).
    #[arg(long)] #[serde(skip_serializing_if = "Option::is_none")] pub epochs: Option<usize>,
    /// Epochs during which the head's last layer is not updated (official 1).
    #[arg(long)] #[serde(skip_serializing_if = "Option::is_none")] pub freeze_last_layer: Option<usize>,
    /// Peak learning rate at batch 256, scaled linearly by batch / 256 (official 0.0005).
    #[arg(long)] #[serde(skip_serializing_if = "Option::is_none")] pub lr: Option<f64>,
    /// Epochs of linear learning-rate warm-up (official 10).
    #[arg(long)] #[serde(skip_serializing_if = "Option::is_none")] pub warmup_epochs: Option<usize>,
    /// Final learning rate of the cosine schedule (official 1e-6).
    #[arg(long)] #[serde(skip_serializing_if = "Option::is_none")] pub min_lr: Option<f64>,
    /// Area range (min max) of the two global crops, as fractions of the picture (official 0.4 1.0).
    #[arg(long, num_args = 2)] #[serde(skip_serializing_if = "Option::is_none")] pub global_crops_scale: Option<Vec<f64>>,
    /// Number of small local crops (official 8; 0 disables multi-crop).
    #[arg(long)] #[serde(skip_serializing_if = "Option::is_none")] pub local_crops_number: Option<usize>,
    /// Area range (min max) of the local crops (official 0.05 0.4).
    #[arg(long, num_args = 2)] #[serde(skip_serializing_if = "Option::is_none")] pub local_crops_scale: Option<Vec<f64>>,
    /// Side of the global crops in pixels (official 224).
    #[arg(long)] #[serde(skip_serializing_if = "Option::is_none")] pub global_crops_size: Option<usize>,
    /// Side of the local crops in pixels (official 96).
    #[arg(long)] #[serde(skip_serializing_if = "Option::is_none")] pub local_crops_size: Option<usize>,
    /// Gaussian blur radius range in pixels (official 0.1 2.0, for 224 / 96 px crops; scale it with the crop size).
    #[arg(long, num_args = 2)] #[serde(skip_serializing_if = "Option::is_none")] pub blur_radius: Option<Vec<f64>>,
    /// Image folder, Tiny-ImageNet root or IDX file/folder; default: the embedded subset.
    #[arg(long)] #[serde(skip_serializing_if = "Option::is_none")] pub data_path: Option<PathBuf>,
    /// Where checkpoints, log.txt, loss.png, eval.json and maps go; a run there resumes.
    #[arg(long)] #[serde(skip_serializing_if = "Option::is_none")] pub output_dir: Option<PathBuf>,
    /// Also keep checkpoint{epoch:04}.safetensors every N epochs (0: never).
    #[arg(long)] #[serde(skip_serializing_if = "Option::is_none")] pub saveckp_freq: Option<usize>,
    /// Seed of the initialisation, the crops and drop-path (a seeded run is reproducible).
    #[arg(long)] #[serde(skip_serializing_if = "Option::is_none")] pub seed: Option<u64>,
    /// Threads making the multi-crop batches.
    #[arg(long)] #[serde(skip_serializing_if = "Option::is_none")] pub num_workers: Option<usize>,
    /// auto (a hardware GPU through wgpu, else cpu), wgpu, cpu.
    #[arg(long, value_enum)] #[serde(skip_serializing_if = "Option::is_none")] pub device: Option<DeviceChoice>,
    /// Data-parallel student replicas, one thread each: the batch's pictures are split between
    /// them and their gradients summed (official DDP on one device). 0: auto, i.e. 2 on the cpu
    /// (Burn's CPU backend runs a small ViT's matrices on one core; a fixed 2 keeps a seeded run's
    /// numbers independent of the number of cores; raise it on more cores) and 1 on a GPU.
    #[arg(long)] #[serde(skip_serializing_if = "Option::is_none")] pub replicas: Option<usize>,
    /// Gradient accumulation: each step runs N micro-batches of --batch_size_per_gpu pictures
    /// one after the other and sums their gradients (one optimizer step on N x the batch; the
    /// lr scaling and the iterations per epoch follow the larger batch). Default 1.
    #[arg(long)] #[serde(skip_serializing_if = "Option::is_none")] pub accum_iter: Option<usize>,
    /// Stop after this many iterations in all (smoke tests, benchmarks).
    #[arg(long)] #[serde(skip_serializing_if = "Option::is_none")] pub max_iters: Option<usize>,
    /// k-NN of the teacher every N epochs (and after the last) into log.txt and loss.png; 0: only
    /// the floor (initial teacher) and the final evaluation.
    #[arg(long)] #[serde(skip_serializing_if = "Option::is_none")] pub eval_every: Option<usize>,
    /// Skip every k-NN evaluation (the floor included) and the attention maps.
    #[arg(long)] #[serde(skip)] pub skip_eval: bool,
    /// Print the resolved configuration (preset, then --config, then flags) as JSON and exit;
    /// `bench/peer.py train --dino_config` reads it, so both sides run the same settings.
    #[arg(long)] #[serde(skip)] pub print_config: bool,
    /// Time every phase of a step (waits for the device after each: slower, for profiling).
    #[arg(long)] #[serde(skip)] pub profile: bool,
}

impl TrainArgs {
    /// Preset (small without --data_path), then the TOML file, then flags.
    pub fn resolve(&self) -> anyhow::Result<TrainConfig> {
        let preset = self.preset.unwrap_or(if self.data_path.is_some() { Preset::Imagenet } else { Preset::Small });
        let mut cfg = preset.config();
        if self.data_path.is_none() {
            cfg.output_dir = PathBuf::from("output");
        }
        if let Some(path) = &self.config {
            let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))?;
            // Keys absent from the file keep the preset's values.
            let mut table: toml::Table = toml::to_string(&cfg)?.parse()?;
            // One line naming the file (toml's messages span several lines).
            let bad = |e: &dyn std::fmt::Display| {
                anyhow::anyhow!("{}: {}", path.display(), e.to_string().split_whitespace().collect::<Vec<_>>().join(" "))
            };
            let file: toml::Table = text.parse().map_err(|e| bad(&e))?;
            table.extend(file);
            cfg = table.try_into().map_err(|e| bad(&e))?;
        }
        // The flags given, over the preset and the file: same keys, same types.
        let mut table: toml::Table = toml::to_string(&cfg)?.parse()?;
        table.extend(toml::Table::try_from(self)?);
        let mut cfg: TrainConfig =
            table.try_into().map_err(|e: toml::de::Error| anyhow::anyhow!("{}", e.to_string().split_whitespace().collect::<Vec<_>>().join(" ")))?;
        cfg.profile |= self.profile;
        cfg.skip_eval |= self.skip_eval;
        cfg.validate()?;
        Ok(cfg)
    }
}

/// `dino train`: train, then (unless --skip_eval) the k-NN of the final teacher on the held-out
/// split beside the floor (the initial teacher, measured in the same run) and attention maps of
/// a few held-out pictures.
pub fn run(args: &TrainArgs) -> anyhow::Result<()> {
    let cfg = args.resolve()?;
    if args.print_config {
        println!("{}", serde_json::to_string_pretty(&cfg)?);
        return Ok(());
    }
    let outcome = train(&cfg)?;
    let Some(eval) = &outcome.evaluator else {
        return Ok(());
    };
    let model = &outcome.teacher.backbone;
    let results = match outcome.final_knn.clone() {
        Some(r) => r,
        None => eval.knn(model, &outcome.device)?,
    };
    crate::knn::print_results(&results);
    let trained = top1s(&results);
    let mut summary = serde_json::Map::new();
    for (k, v) in &trained {
        summary.insert(format!("knn{k}_top1"), serde_json::json!((v * 100.0).round() / 100.0));
    }
    if let Some(floor) = &outcome.floor {
        for (k, v) in floor {
            summary.insert(format!("knn{k}_top1_initial_teacher"), serde_json::json!((v * 100.0).round() / 100.0));
        }
        println!("k-NN on the {} held-out pictures: initial teacher (floor) {} -> trained teacher {}", eval.val.len(), format_knn(floor), format_knn(&trained));
    }
    crate::fsutil::write_atomically(&cfg.output_dir.join("eval.json"), (serde_json::Value::Object(summary).to_string() + "\n").as_bytes())?;
    // Attention maps of the first few held-out pictures, scaled up for viewing.
    let size = cfg.global_crops_size;
    let patch = model.config().patch_size;
    for i in 0..4.min(eval.val.len()) {
        let Ok(img) = eval.val.load(i) else { continue };
        let sizing = dino_shared::preprocess::ImageSize::ShorterSide(size);
        let input = dino_shared::preprocess::for_attention(&image::DynamicImage::ImageRgb8(img), sizing, patch)
            .map_err(|e| anyhow::anyhow!("{}: {e}", eval.val.describe(i)))?;
        let (_, attn) = dino_shared::inference::features_and_attention(model, &input, &outcome.device);
        let maps = super::attention::maps_from(attn, model, &input);
        let dir = cfg.output_dir.join("attention").join(format!("val{i}"));
        super::attention::write_outputs(&maps, &input.image, patch, 0.6, &dir, 8)?;
    }
    eprintln!("done: checkpoint, log.txt, loss.png, eval.json and attention/ in {}", cfg.output_dir.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Preset, then the TOML file, then flags; a bad file is one line naming it.
    #[test]
    fn config_file_then_flags() {
        let dir = std::env::temp_dir().join(format!("dino-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("run.toml");
        std::fs::write(&file, "epochs = 7\nlr = 0.002\nglobal_crops_scale = [0.3, 1.0]\n").unwrap();
        let args = TrainArgs { config: Some(file.clone()), lr: Some(0.003), ..Default::default() };
        let cfg = args.resolve().unwrap();
        assert_eq!(cfg.epochs, 7);
        assert_eq!(cfg.lr, 0.003);
        assert_eq!(cfg.global_crops_scale, (0.3, 1.0));
        assert_eq!(cfg.patch_size, Preset::Small.config().patch_size);
        std::fs::write(&file, "epochs = \"x\"\n").unwrap();
        let err = TrainArgs { config: Some(file.clone()), ..Default::default() }.resolve().unwrap_err().to_string();
        assert!(err.contains("run.toml") && err.contains("epochs") && !err.contains('\n'), "{err}");
        std::fs::write(&file, "no_such_flag = 1\n").unwrap();
        let err = TrainArgs { config: Some(file), ..Default::default() }.resolve().unwrap_err().to_string();
        assert!(err.contains("no_such_flag"), "{err}");
    }

    use clap::{Args, Parser};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        train: TrainArgs,
    }

    /// A flag whose name is not a `TrainConfig` key would be refused at run time only when
    /// given; this checks every flag once.
    #[test]
    fn every_setting_flag_is_a_config_key() {
        let keys = serde_json::to_value(TrainConfig::default()).unwrap();
        let keys = keys.as_object().unwrap();
        let cmd = TrainArgs::augment_args(clap::Command::new("train"));
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if !["config", "preset", "print_config", "help"].contains(&id) {
                assert!(keys.contains_key(id), "--{id} is not a TrainConfig key");
            }
        }
    }

    /// Flags of every kind (number, bool, pair, enum, path) reach the configuration, over the
    /// preset; flags not given keep the preset's values.
    #[test]
    fn flags_override_the_preset() {
        let cli = Cli::try_parse_from([
            "dino", "--lr", "0.01", "--norm_last_layer", "true", "--blur_radius", "0.5", "1.5", "--global_crops_scale",
            "0.3", "1.0", "--device", "cpu", "--output_dir", "runs/x", "--accum_iter", "2", "--seed", "7",
        ])
        .unwrap();
        let cfg = cli.train.resolve().unwrap();
        let small = Preset::Small.config();
        assert_eq!((cfg.lr, cfg.norm_last_layer, cfg.blur_radius, cfg.global_crops_scale), (0.01, true, (0.5, 1.5), (0.3, 1.0)));
        assert_eq!((cfg.device, cfg.output_dir.clone(), cfg.accum_iter, cfg.seed), (DeviceChoice::Cpu, PathBuf::from("runs/x"), 2, 7));
        assert_eq!((cfg.batch_size_per_gpu, cfg.epochs, cfg.out_dim), (small.batch_size_per_gpu, small.epochs, small.out_dim));
    }
}
