//! `dino train`: self-distillation with no labels (official main_dino.py train_dino).

use std::path::PathBuf;

use crate::config::{Preset, TrainConfig};
use crate::train::{format_knn, top1s, train};

/// The flags of `dino train`: the run-only ones below, and one flag per [`TrainConfig`] field
/// (declared there, with its help). The flags given are laid over the preset and the `--config`
/// file by clap's `update_from_arg_matches`, which sets only the settings present on the
/// command line.
#[derive(Debug, Clone)]
pub struct TrainArgs {
    pub run: RunArgs,
    /// What the command line held, read once the preset and the file are known.
    matches: clap::ArgMatches,
}

/// The flags of `dino train` that are not settings of the run.
#[derive(clap::Args, Debug, Clone, Default)]
#[command(rename_all = "snake_case")]
pub struct RunArgs {
    /// TOML file with any of the settings below (flags given here win).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Starting values: small (28 px, the default without --data_path), tiny-imagenet, imagenet.
    #[arg(long, value_enum)]
    pub preset: Option<Preset>,
    /// Print the resolved configuration (preset, then --config, then flags) as JSON and exit;
    /// `bench/peer.py train --dino_config` reads it, so both sides run the same settings.
    #[arg(long)]
    pub print_config: bool,
}

impl clap::Args for TrainArgs {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        // `_for_update`: no setting is required, none has a clap default (the preset gives them).
        TrainConfig::augment_args_for_update(RunArgs::augment_args(cmd))
    }
    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

impl clap::FromArgMatches for TrainArgs {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        Ok(Self { run: RunArgs::from_arg_matches(matches)?, matches: matches.clone() })
    }
    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl TrainArgs {
    #[cfg(test)]
    /// `dino train`'s flags from a command line without the program name, e.g. `["--lr", "0.01"]`.
    pub fn parse_from<I: IntoIterator<Item = T>, T: Into<std::ffi::OsString> + Clone>(args: I) -> Result<Self, clap::Error> {
        use clap::{Args, FromArgMatches};
        let cmd = Self::augment_args(clap::Command::new("train").no_binary_name(true));
        Self::from_arg_matches(&cmd.try_get_matches_from(args)?)
    }

    /// Preset (small without a data path, imagenet with one, from the flags or the file), then
    /// the TOML file, then flags.
    pub fn resolve(&self) -> anyhow::Result<TrainConfig> {
        use clap::FromArgMatches;
        // One line naming the file (toml's messages span several lines).
        let file: Option<(&PathBuf, toml::Table)> = match &self.run.config {
            Some(path) => {
                let bad = |e: &dyn std::fmt::Display| {
                    anyhow::anyhow!("{}: {}", path.display(), e.to_string().split_whitespace().collect::<Vec<_>>().join(" "))
                };
                let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))?;
                Some((path, text.parse().map_err(|e| bad(&e))?))
            }
            None => None,
        };
        let data_path_given = self.matches.get_one::<PathBuf>("data_path").is_some()
            || file.as_ref().is_some_and(|(_, t)| t.contains_key("data_path"));
        let preset = self.run.preset.unwrap_or(if data_path_given { Preset::Imagenet } else { Preset::Small });
        let mut cfg = preset.config();
        if !data_path_given {
            cfg.output_dir = PathBuf::from("output");
        }
        if let Some((path, file)) = file {
            // Keys absent from the file keep the preset's values.
            let mut table: toml::Table = toml::to_string(&cfg)?.parse()?;
            table.extend(file);
            cfg = table.try_into().map_err(|e: toml::de::Error| {
                anyhow::anyhow!("{}: {}", path.display(), e.to_string().split_whitespace().collect::<Vec<_>>().join(" "))
            })?;
        }
        // The flags given, over the preset and the file.
        cfg.update_from_arg_matches(&self.matches).map_err(|e| anyhow::anyhow!("{}", e.to_string().trim()))?;
        cfg.validate()?;
        Ok(cfg)
    }
}

/// `dino train`: train, then (unless --skip_eval) the k-NN of the final teacher on the held-out
/// split beside the floor (the initial teacher, measured in the same run) and attention maps of
/// a few held-out pictures.
pub fn run(args: &TrainArgs) -> anyhow::Result<()> {
    let cfg = args.resolve()?;
    if args.run.print_config {
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
        // A picture that cannot take the size (smaller than one patch, too elongated) has no map
        // to draw: skipped, as in the k-NN (which counted it). A size error names the flag.
        let input = match dino_shared::preprocess::for_attention(&image::DynamicImage::ImageRgb8(img), sizing, patch) {
            Ok(input) => input,
            Err(e) if !e.is_size_flag_error() => continue,
            Err(e) => anyhow::bail!("{}: {}", eval.val.describe(i), e.message_for_flag("--global_crops_size")),
        };
        let (_, attn) = dino_shared::inference::features_and_attention(model, &input, None, &outcome.device)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let maps = dino_shared::inference::attention_maps(attn.into_data(), model, &input)
            .map_err(|e| anyhow::anyhow!("{}: {e}", eval.val.describe(i)))?;
        let dir = cfg.output_dir.join("attention").join(format!("val{i}"));
        super::attention::write_outputs(&maps, &input.image, patch, 0.6, &dir, 8)?;
    }
    eprintln!("done: checkpoint, log.txt, loss.png, eval.json and attention/ in {}", cfg.output_dir.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::DeviceChoice;

    /// Preset, then the TOML file, then flags; a bad file is one line naming it.
    #[test]
    fn config_file_then_flags() {
        let dir = std::env::temp_dir().join(format!("dino-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("run.toml");
        let with_file = |extra: &[&str]| {
            let mut argv = vec!["--config", file.to_str().unwrap()];
            argv.extend_from_slice(extra);
            TrainArgs::parse_from(argv).unwrap().resolve()
        };
        std::fs::write(&file, "epochs = 7\nlr = 0.002\nglobal_crops_scale = [0.3, 1.0]\nskip_eval = true\n").unwrap();
        let cfg = with_file(&["--lr", "0.003"]).unwrap();
        assert_eq!(cfg.epochs, 7);
        assert_eq!(cfg.lr, 0.003);
        assert_eq!(cfg.global_crops_scale, [0.3, 1.0]);
        assert_eq!(cfg.patch_size, Preset::Small.config().patch_size);
        // A boolean of the file stays unless the flag is given.
        assert!(cfg.skip_eval);
        assert!(!with_file(&["--skip_eval", "false"]).unwrap().skip_eval);
        std::fs::write(&file, "epochs = \"x\"\n").unwrap();
        let err = with_file(&[]).unwrap_err().to_string();
        assert!(err.contains("run.toml") && err.contains("epochs") && !err.contains('\n'), "{err}");
        std::fs::write(&file, "no_such_flag = 1\n").unwrap();
        let err = with_file(&[]).unwrap_err().to_string();
        assert!(err.contains("no_such_flag"), "{err}");
        // A data path in the file chooses the preset as the flag does.
        std::fs::write(&file, "data_path = \"/data/x\"\n").unwrap();
        assert_eq!(with_file(&[]).unwrap().arch, "vit_small");
        std::fs::write(&file, "blur_radius = [0.1, 0.5, 2.0]\n").unwrap();
        let err = with_file(&[]).unwrap_err().to_string();
        assert!(err.contains("--blur_radius takes two numbers"), "{err}");
    }

    /// Flags of every kind (number, bool, pair, enum, path) reach the configuration, over the
    /// preset; flags not given keep the preset's values.
    #[test]
    fn flags_override_the_preset() {
        let args = TrainArgs::parse_from([
            "--lr", "0.01", "--norm_last_layer", "true", "--blur_radius", "0.5", "1.5", "--global_crops_scale", "0.3",
            "1.0", "--device", "cpu", "--output_dir", "runs/x", "--accum_iter", "2", "--seed", "7", "--skip_eval",
        ])
        .unwrap();
        let cfg = args.resolve().unwrap();
        let small = Preset::Small.config();
        assert_eq!((cfg.lr, cfg.norm_last_layer, &cfg.blur_radius[..], &cfg.global_crops_scale[..]), (0.01, true, &[0.5, 1.5][..], &[0.3, 1.0][..]));
        assert_eq!((cfg.device, cfg.output_dir.clone(), cfg.accum_iter, cfg.seed, cfg.skip_eval), (DeviceChoice::Cpu, PathBuf::from("runs/x"), 2, 7, true));
        assert_eq!((cfg.batch_size_per_gpu, cfg.epochs, cfg.out_dim, cfg.profile), (small.batch_size_per_gpu, small.epochs, small.out_dim, false));
        // Without flags: the preset itself (small without --data_path, imagenet with it).
        let mut expected = small;
        expected.output_dir = PathBuf::from("output");
        assert_eq!(TrainArgs::parse_from::<_, &str>([]).unwrap().resolve().unwrap(), expected);
        let cfg = TrainArgs::parse_from(["--data_path", "x"]).unwrap().resolve().unwrap();
        assert_eq!((cfg.arch.as_str(), cfg.data_path), ("vit_small", Some(PathBuf::from("x"))));
    }

    /// Every field of the configuration is a flag of the same name with help, and a key of
    /// `--print_config`'s JSON.
    #[test]
    fn every_setting_is_a_flag_with_help() {
        use clap::Args;
        let keys = serde_json::to_value(TrainConfig::default()).unwrap();
        let keys: Vec<&String> = keys.as_object().unwrap().keys().collect();
        let cmd = TrainArgs::augment_args(clap::Command::new("train"));
        for key in &keys {
            let arg = cmd.get_arguments().find(|a| a.get_id().as_str() == key.as_str());
            let arg = arg.unwrap_or_else(|| panic!("setting {key} has no flag"));
            assert_eq!(arg.get_long(), Some(key.as_str()));
        }
        assert_eq!(cmd.get_arguments().count(), keys.len() + 3, "flags: the settings plus --config, --preset, --print_config");
    }
}
