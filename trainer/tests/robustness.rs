//! Inputs that must not silently lie (issue: evaluation and inputs): each case of the replayed
//! bug reports with its right value, and the crash safety of the checkpoint writer.

mod common;
use common::*;

use std::io::Read;
use std::path::{Path, PathBuf};

/// Pictures and labels of one split of the embedded Fashion-MNIST subset.
fn mini(split: &str) -> (Vec<Vec<u8>>, Vec<u8>) {
    let src = repo().join("data/fashion-mnist-mini");
    let read = |f: String| {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(std::fs::File::open(src.join(f)).unwrap()).read_to_end(&mut out).unwrap();
        out
    };
    let images = read(format!("{split}-images-idx3-ubyte.gz"));
    let labels = read(format!("{split}-labels-idx1-ubyte.gz"))[8..].to_vec();
    (images[16..].chunks(784).map(|c| c.to_vec()).collect(), labels)
}

/// `train/` and `val/` with `sneaker trouser tshirt`, 40 / 20 real pictures each (PNG).
fn three_classes(name: &str) -> PathBuf {
    let root = temp_dir(name);
    for (split, src, n) in [("train", "train", 40), ("val", "t10k", 20)] {
        let (images, labels) = mini(src);
        for (class, label) in [("sneaker", 7u8), ("trouser", 1), ("tshirt", 0)] {
            let dir = root.join(split).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            let picks = images.iter().zip(&labels).filter(|(_, l)| **l == label).take(n);
            for (i, (px, _)) in picks.enumerate() {
                let img = image::GrayImage::from_raw(28, 28, px.clone()).unwrap();
                img.save(dir.join(format!("{i:03}.png"))).unwrap();
            }
        }
    }
    root
}

/// A flat folder of the first `n` training pictures as PNG files.
fn png_folder(name: &str, n: usize) -> PathBuf {
    let dir = temp_dir(name);
    let (images, _) = mini("train");
    for (i, px) in images.iter().take(n).enumerate() {
        image::GrayImage::from_raw(28, 28, px.clone()).unwrap().save(dir.join(format!("{i:02}.png"))).unwrap();
    }
    dir
}

/// A model that knows nothing of the data: fine, the cases compare evaluations of one model.
fn model() -> PathBuf {
    repo().join("web/assets/dino-default.safetensors")
}

fn knn_lines(r: &Output) -> Vec<String> {
    r.stdout.lines().filter(|l| l.contains("NN classifier result")).map(str::to_string).collect()
}

#[test]
fn top5_with_fewer_than_5_neighbours_counts_only_voted_classes() {
    let data = three_classes("top5");
    let r = dino(&["knn", "--pretrained_weights", s(&model()), "--data_path", s(&data), "--nb_knn", "1", "2", "--device", "cpu"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    for line in knn_lines(&r) {
        // "k-NN classifier result: Top1: a, Top5: b"
        let nums: Vec<f64> = line.split(|c: char| c == ':' || c == ',').filter_map(|x| x.trim().parse().ok()).collect();
        if line.starts_with("1-NN") {
            assert_eq!(nums[0], nums[1], "with k = 1 the top-5 is the top-1: {line}");
        }
        assert!(nums[0] <= nums[1] && nums[1] <= 100.0, "{line}");
    }
}

#[test]
fn hidden_and_empty_folders_are_not_classes() {
    let data = three_classes("hidden");
    let knn = |d: &Path| dino(&["knn", "--pretrained_weights", s(&model()), "--data_path", s(d), "--nb_knn", "10", "--device", "cpu"]);
    let linear = |d: &Path| {
        dino(&[
            "linear", "--pretrained_weights", s(&model()), "--data_path", s(d), "--epochs", "3", "--lr", "0.05",
            "--batch_size_per_gpu", "32", "--cache_views", "1", "--device", "cpu",
        ])
    };
    let (k0, l0) = (knn(&data), linear(&data));
    assert_eq!(k0.code, 0, "{}", k0.stderr);
    assert_eq!(l0.code, 0, "{}", l0.stderr);
    std::fs::create_dir_all(data.join("train/.ipynb_checkpoints")).unwrap();
    std::fs::create_dir_all(data.join("train/aaa-empty")).unwrap();
    std::fs::copy(image("coffee.png"), data.join("train/loose.png")).unwrap();
    let (k1, l1) = (knn(&data), linear(&data));
    assert_eq!(k1.code, 0, "{}", k1.stderr);
    assert_eq!(knn_lines(&k0), knn_lines(&k1), "a hidden or empty folder changed the k-NN");
    assert_eq!(l0.stdout, l1.stdout, "a hidden or empty folder changed the linear probe");
    assert!(k1.stderr.contains(".ipynb_checkpoints/") && k1.stderr.contains("aaa-empty/"), "{}", k1.stderr);
    assert!(k1.stderr.contains("1 picture(s) beside the class folders"), "{}", k1.stderr);
}

#[test]
fn a_val_class_unknown_to_train_is_named() {
    let data = three_classes("unknown-class");
    std::fs::rename(data.join("val/tshirt"), data.join("val/shirt")).unwrap();
    let r = dino(&["knn", "--pretrained_weights", s(&model()), "--data_path", s(&data), "--device", "cpu"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    let line = r.error_line();
    assert!(line.contains("class shirt") && line.contains("not a class of the training split"), "{line}");
}

#[test]
fn no_validation_split_is_never_a_self_evaluation() {
    let data = three_classes("no-split");
    let train_only = data.join("train");
    // A folder of class folders, and one IDX file: each is one split.
    let idx_file = repo().join("data/fashion-mnist-mini/train-images-idx3-ubyte.gz");
    for root in [&train_only, &idx_file] {
        for cmd in ["knn", "linear"] {
            let r = dino(&[cmd, "--pretrained_weights", s(&model()), "--data_path", s(root), "--device", "cpu"]);
            assert_eq!(r.code, 2, "{cmd}: {}", r.stderr);
            assert!(r.error_line().contains("no validation split"), "{cmd}: {}", r.stderr);
        }
    }
    // An explicit --val_path is the validation split: an IDX folder gives its t10k pictures.
    let idx = repo().join("data/fashion-mnist-mini");
    let r = dino(&[
        "knn", "--pretrained_weights", s(&model()), "--train_path", s(&idx), "--val_path", s(&idx), "--nb_knn", "20",
        "--device", "cpu",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("3000 train / 1000 val"), "{}", r.stderr);
    // Training without a split says so and writes no evaluation.
    let out = temp_dir("no-split-train");
    let r = dino(&[
        "train", "--data_path", s(&train_only), "--output_dir", s(&out), "--preset", "small", "--epochs", "1",
        "--batch_size_per_gpu", "40", "--device", "cpu",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("no validation split, evaluation skipped"), "{}", r.stderr);
    assert!(!out.join("eval.json").exists());
}

#[test]
fn numeric_options_are_validated_with_one_line() {
    let data = repo().join("data/fashion-mnist-mini");
    let m = model();
    let photo = image("astronaut.jpg");
    let out = temp_dir("numeric-options-out");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["knn", "--pretrained_weights", s(&m), "--data_path", s(&data), "--nb_knn", "0"], "--nb_knn"),
        (vec!["knn", "--pretrained_weights", s(&m), "--data_path", s(&data), "--temperature", "0"], "--temperature"),
        (vec!["knn", "--pretrained_weights", s(&m), "--data_path", s(&data), "--batch_size_per_gpu", "0"], "--batch_size_per_gpu"),
        (vec!["knn", "--pretrained_weights", s(&m), "--data_path", s(&data), "--image_size", "2"], "--image_size"),
        (vec!["linear", "--pretrained_weights", s(&m), "--data_path", s(&data), "--epochs", "0"], "--epochs"),
        (vec!["linear", "--pretrained_weights", s(&m), "--data_path", s(&data), "--n_last_blocks", "9"], "--n_last_blocks"),
        (vec!["train", "--epochs", "0"], "--epochs"),
        (vec!["train", "--local_crops_size", "10"], "--patch_size"),
        (vec!["train", "--num_heads", "5"], "heads"),
        (vec!["train", "--teacher_temp", "0"], "--teacher_temp"),
        (vec!["train", "--momentum_teacher", "1.5"], "--momentum_teacher"),
        (vec!["train", "--warmup_epochs", "999"], "--warmup_epochs"),
        (vec!["train", "--accum_iter", "0"], "--accum_iter"),
        (vec!["train", "--use_fp16", "true", "--use_bf16", "true"], "--use_fp16 and --use_bf16"),
        (vec!["bench", "infer", "--use_fp16", "true", "--use_bf16", "true"], "--use_fp16 and --use_bf16"),
        (vec!["train", "--batch_size_per_gpu", "64", "--accum_iter", "100"], "--accum_iter"),
        (vec!["attention", "--image", s(&photo), "--pretrained_weights", s(&m), "--image_size", "0"], "--image_size"),
        (vec!["attention", "--image", s(&photo), "--pretrained_weights", s(&m), "--num_heads", "5"], "5 heads"),
        // The benchmarks' own flags (a zero count panicked on an empty list of times).
        (vec!["bench", "infer", "--iters", "0"], "--iters"),
        (vec!["bench", "infer", "--batch", "0"], "--batch"),
        (vec!["bench", "infer", "--image_size", "230"], "--image_size 230"),
        (vec!["bench", "step", "--iters", "0"], "--iters"),
        (vec!["bench", "matmul", "--shapes", "197x0x384"], "--shapes"),
        (vec!["bench", "matmul", "--shapes", "100000x100000x100000"], "--shapes"),
        (vec!["bench", "matmul", "--rounds", "0"], "--rounds"),
        // Sizes past the memory bound: one line, not an allocation failure (they aborted) or a
        // division by zero (--patch_size 0 panicked).
        (vec!["train", "--patch_size", "0"], "--patch_size"),
        (vec!["train", "--global_crops_size", "4096"], "--global_crops_size"),
        (vec!["train", "--local_crops_size", "1024"], "--local_crops_size"),
        (vec!["bench", "infer", "--batch", "100000"], "--batch: 100000 inputs"),
        (vec!["bench", "infer", "--image_size", "16", "--batch", "20000000"], "--batch: 20000000 inputs"),
        (vec!["bench", "infer", "--warmup", "18446744073709551615"], "--warmup"),
        (vec!["train", "--local_crops_size", "68719476736"], "--local_crops_size"),
        (vec!["train", "--epochs", "18446744073709551615", "--skip_eval", "--output_dir", s(&out)], "--epochs"),
        (vec!["train", "--num_workers", "100000"], "--num_workers"),
        (vec!["train", "--local_crops_size", "400", "--local_crops_number", "1"], "--local_crops_number x --batch_size_per_gpu: 32 local crops"),
        (vec!["knn", "--pretrained_weights", s(&m), "--data_path", s(&data), "--image_size", "18446744073709551615"], "--image_size"),
        (vec!["bench", "step", "--batch_size_per_gpu", "100000"], "--batch_size_per_gpu"),
        (vec!["bench", "step", "--local_crops_number", "1000000"], "--local_crops_number"),
        // Each tensor within the bound, the whole backward pass over any machine's memory (960
        // GiB): one line before the run, not the OOM killer mid-step.
        (vec!["train", "--depth", "256", "--local_crops_number", "2000"], "GiB of activations for its backward pass"),
    ];
    for (args, what) in cases {
        let r = dino(&[args.clone(), vec!["--device", "cpu"]].concat());
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        let line = r.error_line();
        assert!(line.contains(what), "{args:?}: {line}");
    }
    // bench augment (no --device): the crop flags through the same checks.
    let r = dino(&["bench", "augment", "--preset", "small", "--data_path", s(&data), "--local_crops_number", "4294967297"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.error_line().contains("--local_crops_number"), "{}", r.stderr);
}

#[test]
fn a_folder_where_nothing_decodes_is_an_error() {
    let data = temp_dir("no-readable");
    for i in 0..8 {
        std::fs::write(data.join(format!("{i}.jpg")), "this is text, not a picture").unwrap();
    }
    let out = temp_dir("no-readable-out");
    let r = dino(&[
        "train", "--data_path", s(&data), "--output_dir", s(&out), "--preset", "small", "--epochs", "1",
        "--batch_size_per_gpu", "4", "--device", "cpu", "--skip_eval",
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    let line = r.error_line();
    assert!(line.contains(s(&data)) && line.contains("no readable image"), "{line}");
}

#[test]
fn one_channel_patch_embedding_is_refused_with_its_shape() {
    use dino_shared::weights::{parse_safetensors, serialize_safetensors, ExportDType};
    let bytes = std::fs::read(model()).unwrap();
    let (mut sd, _) = parse_safetensors(&bytes).unwrap();
    let w = sd.get_mut("patch_embed.proj.weight").unwrap();
    let (dim, p) = (w.shape[0], w.shape[2]);
    let summed: Vec<f32> = (0..dim * p * p)
        .map(|i| {
            let (o, r) = (i / (p * p), i % (p * p));
            (0..3).map(|c| w.data[(o * 3 + c) * p * p + r]).sum()
        })
        .collect();
    *w = dino_shared::state_dict::HostTensor::new(vec![dim, 1, p, p], summed);
    let dir = temp_dir("gray-weights");
    let file = dir.join("one-channel.safetensors");
    std::fs::write(&file, serialize_safetensors(&sd, ExportDType::F32, Default::default())).unwrap();
    let out = temp_dir("gray-weights-out");
    for args in [
        vec!["attention", "--image", s(&image("astronaut.jpg")), "--pretrained_weights", s(&file), "--output_dir", s(&out)],
        vec!["embed", "--image", s(&image("astronaut.jpg")), "--pretrained_weights", s(&file), "--output", s(&out.join("f.npy"))],
    ] {
        let r = dino(&[args, vec!["--device", "cpu"]].concat());
        assert_eq!(r.code, 2, "{}", r.stderr);
        let line = r.error_line();
        assert!(line.contains("one-channel.safetensors") && line.contains(&format!("[{dim}, 1, {p}, {p}]")), "{line}");
    }
}

#[test]
fn a_jpeg_with_a_trailer_decodes_everywhere() {
    let dir = temp_dir("trailer");
    let mut bytes = std::fs::read(image("astronaut.jpg")).unwrap();
    bytes.extend(std::iter::repeat_n(0xABu8, 4096));
    std::fs::write(dir.join("motion.jpg"), &bytes).unwrap();
    let out = temp_dir("trailer-out");
    let r = dino(&[
        "attention", "--image", s(&dir.join("motion.jpg")), "--pretrained_weights", s(&fixture("tiny16_timm.safetensors")), "--num_heads", "3",
        "--image_size", "64", "--output_dir", s(&out), "--device", "cpu",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = dino(&[
        "embed", "--data_path", s(&dir), "--pretrained_weights", s(&fixture("tiny16_timm.safetensors")), "--num_heads", "3", "--image_size", "32",
        "--output", s(&out.join("f.npy")), "--device", "cpu",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!r.stderr.contains("skipped"), "{}", r.stderr);
}

/// torchvision `Resize(224)`: shorter side 224, aspect kept, cropped to whole patches.
#[test]
fn one_image_size_keeps_the_aspect_ratio() {
    let out = temp_dir("aspect");
    let r = dino(&[
        "attention", "--image", s(&image("chelsea.jpg")), "--pretrained_weights", s(&fixture("tiny16_timm.safetensors")), "--num_heads", "3",
        "--image_size", "224", "--output_dir", s(&out), "--device", "cpu",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let shape = npy_shape(&out.join("attention.npy"));
    assert_eq!(&shape[1..], &[14, 21], "320x213 at 224 should be 14 x 21 patches of 16");
}

/// The checkpoint writer killed at every step of its atomic writes (fault injection: the
/// process aborts there), then resumed: the run ends exactly as an uninterrupted one.
#[test]
fn crash_during_checkpoint_writes_resumes_exactly() {
    let data = png_folder("crash-data", 32);
    let args = |out: &Path| -> Vec<String> {
        [
            "train", "--data_path", s(&data), "--output_dir", s(out), "--arch", "custom", "--embed_dim", "32", "--depth", "1",
            "--num_heads", "2", "--patch_size", "4", "--global_crops_size", "16", "--local_crops_size", "8",
            "--local_crops_number", "1", "--out_dim", "32", "--head_hidden_dim", "32", "--head_bottleneck_dim", "16",
            "--batch_size_per_gpu", "16", "--epochs", "2", "--warmup_epochs", "1", "--saveckp_freq", "1", "--device", "cpu",
            "--skip_eval", "--seed", "3",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect()
    };
    let run = |out: &Path, crash_at: Option<usize>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_dino"));
        cmd.args(args(out)).stderr(std::process::Stdio::null());
        if let Some(n) = crash_at {
            cmd.env("DINO_CRASH_AT", n.to_string());
        }
        cmd.status().unwrap()
    };
    let whole = temp_dir("crash-whole");
    assert!(run(&whole, None).success());
    // Every tensor of a checkpoint (student, teacher, optimizer, centre), exactly.
    let tensors = |dir: &Path| {
        let (sd, meta) = dino_shared::weights::parse_safetensors(&std::fs::read(dir.join("checkpoint.safetensors")).unwrap()).unwrap();
        let all: Vec<(String, Vec<usize>, Vec<f32>)> = sd.into_iter().map(|(k, t)| (k, t.shape, t.data)).collect();
        (all, meta.get("epoch").cloned())
    };
    let reference = tensors(&whole);
    // Two epochs x 4 files (checkpoint, its numbered copy, log.txt, loss.png) x 5 steps.
    let mut crashed = 0;
    for n in (1..=40).step_by(3) {
        let out = temp_dir(&format!("crash-{n}"));
        let status = run(&out, Some(n));
        if status.success() {
            continue;
        }
        crashed += 1;
        // Whatever is on disk now is a complete file: the previous checkpoint or none.
        if let Ok(bytes) = std::fs::read(out.join("checkpoint.safetensors")) {
            assert!(dino_shared::weights::parse_safetensors(&bytes).is_ok(), "crash at step {n} left a torn checkpoint");
        }
        assert!(run(&out, None).success(), "the run after a crash at step {n} failed");
        assert!(tensors(&out) == reference, "crash at step {n}: the resumed run ends differently");
        let _ = std::fs::remove_dir_all(&out);
    }
    assert!(crashed >= 10, "only {crashed} runs crashed: the fault injection did not fire");
}

/// A full disk (a file-size limit makes every large write fail) is one line naming the file,
/// exit 2, and the previous checkpoint is kept.
#[test]
fn full_disk_keeps_the_previous_checkpoint() {
    let data = png_folder("disk-data", 16);
    let out = temp_dir("disk-out");
    let base = |epochs: &str| {
        format!(
            "{} train --data_path {} --output_dir {} --preset small --epochs {epochs} --batch_size_per_gpu 16 --device cpu --skip_eval",
            env!("CARGO_BIN_EXE_dino"),
            s(&data),
            s(&out)
        )
    };
    let r = std::process::Command::new("sh").arg("-c").arg(base("1")).output().unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let before = std::fs::read(out.join("checkpoint.safetensors")).unwrap();
    // SIGXFSZ ignored: a write past the limit fails with EFBIG instead of killing the process.
    let limited = format!("trap '' XFSZ; ulimit -f 64; exec {}", base("2"));
    let r = std::process::Command::new("sh").arg("-c").arg(limited).output().unwrap();
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(2), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("checkpoint.safetensors: cannot write"), "{}", errors[0]);
    assert_eq!(std::fs::read(out.join("checkpoint.safetensors")).unwrap(), before, "the previous checkpoint changed");
}

/// A picture too elongated to resize to the evaluation size (its shorter side to `--image_size`
/// would pass the decoded-size bound) is the picture's fault, like an unreadable one: k-NN,
/// linear probe, embed and train's k-NN skip and count it and go on (the linear probe dropped
/// both without a word). A size no picture can take is refused before (`check_input_size`).
#[test]
fn an_elongated_or_unreadable_picture_is_skipped_and_counted_by_the_evaluations() {
    let data = temp_dir("eval-panorama");
    for split in ["train", "val"] {
        std::fs::create_dir_all(data.join(split).join("a")).unwrap();
        std::fs::copy(image("chelsea.jpg"), data.join(split).join("a").join("chelsea.jpg")).unwrap();
    }
    std::fs::copy(image("not-an-image.jpg"), data.join("train").join("a").join("broken.jpg")).unwrap();
    // 8 x 40000 px: at --image_size 224 its shorter side becomes 256 px, so the resized picture
    // would be 256 x 1280000 x 3 bytes, over the decoded-size bound.
    image::GrayImage::new(8, 40000).save(data.join("val").join("a").join("pano.png")).unwrap();
    let m = model();
    let out = temp_dir("eval-panorama-out").join("e.npy");
    for (args, skipped) in [
        (vec!["knn", "--pretrained_weights", s(&m), "--data_path", s(&data)], "skipped 2 picture(s)"),
        (vec!["linear", "--pretrained_weights", s(&m), "--data_path", s(&data), "--epochs", "1"], "skipped 2 picture(s)"),
        (vec!["embed", "--pretrained_weights", s(&m), "--data_path", s(&data.join("val").join("a")), "--output", s(&out)], "pano.png"),
    ] {
        let r = dino(&[args.clone(), vec!["--image_size", "224", "--device", "cpu"]].concat());
        assert_eq!(r.code, 0, "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains(skipped) && r.stderr.contains("too elongated"), "{args:?}: {}", r.stderr);
    }
    // The size no picture can take: one line naming the flag.
    let r = dino(&["knn", "--pretrained_weights", s(&m), "--data_path", s(&data), "--image_size", "20000", "--device", "cpu"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.error_line().starts_with("error: --image_size"), "{}", r.stderr);
    // A split with nothing usable: one line naming the split and its first picture, before any
    // extraction (knn and linear extracted the whole train split first, then said "no readable
    // images" without naming a folder).
    std::fs::remove_file(data.join("val").join("a").join("chelsea.jpg")).unwrap();
    for args in [vec!["knn"], vec!["linear", "--epochs", "1"]] {
        let r = dino(&[args.clone(), vec!["--pretrained_weights", s(&m), "--data_path", s(&data), "--image_size", "224", "--device", "cpu"]].concat());
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        let line = r.error_line();
        assert!(line.contains("val split has no picture usable") && line.contains("pano.png"), "{args:?}: {line}");
    }
}
