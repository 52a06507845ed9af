//! End-to-end training through the real binary on real pictures (a slice of the embedded
//! Fashion-MNIST subset): the loss falls, an interrupted run resumes to the same numbers as an
//! uninterrupted one, a diverging run stops and keeps its last checkpoint, bad files are skipped.

mod common;
use common::*;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The first `n` training pictures of the embedded subset, as an IDX pair.
fn small_idx(n: usize, name: &str) -> PathBuf {
    let dir = temp_dir(name);
    let src = repo().join("data/fashion-mnist-mini");
    let read = |f: &str| {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(std::fs::File::open(src.join(f)).unwrap()).read_to_end(&mut out).unwrap();
        out
    };
    let images = read("train-images-idx3-ubyte.gz");
    let labels = read("train-labels-idx1-ubyte.gz");
    let mut img = vec![0, 0, 8, 3];
    for d in [n as u32, 28, 28] {
        img.extend_from_slice(&d.to_be_bytes());
    }
    img.extend_from_slice(&images[16..16 + n * 784]);
    let mut lab = vec![0, 0, 8, 1];
    lab.extend_from_slice(&(n as u32).to_be_bytes());
    lab.extend_from_slice(&labels[8..8 + n]);
    std::fs::write(dir.join("train-images-idx3-ubyte"), img).unwrap();
    std::fs::write(dir.join("train-labels-idx1-ubyte"), lab).unwrap();
    dir
}

/// A quick configuration of the small preset: 4 iterations of 16 pictures per epoch.
fn train_args<'a>(data: &'a Path, out: &'a Path, epochs: &'a str) -> Vec<&'a str> {
    vec![
        "train", "--data_path", s(data), "--output_dir", s(out), "--preset", "small", "--epochs", epochs,
        "--batch_size_per_gpu", "16", "--device", "cpu", "--num_workers", "2", "--skip_eval", "--seed", "7",
        "--warmup_epochs", "1",
    ]
}

#[derive(serde::Deserialize)]
#[allow(dead_code)]
struct EpochLog {
    epoch: usize,
    train_loss: f64,
    iter_losses: Vec<f64>,
}

fn read_log(out: &Path) -> Vec<EpochLog> {
    std::fs::read_to_string(out.join("log.txt"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn loss_falls_on_real_pictures() {
    let data = small_idx(64, "train-falls-data");
    let out = temp_dir("train-falls");
    // No warm-up and no frozen last layer, so that a few steps move the loss: it falls from
    // the first step (later, on so little data, it climbs back towards ln(out_dim)).
    let mut args = train_args(&data, &out, "5");
    let warmup = args.iter().position(|a| *a == "--warmup_epochs").unwrap();
    args[warmup + 1] = "0";
    args.extend_from_slice(&["--lr", "0.02", "--freeze_last_layer", "0", "--max_iters", "8"]);
    let r = dino(&args);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let log = read_log(&out);
    let losses: Vec<f64> = log.iter().flat_map(|l| l.iter_losses.clone()).collect();
    assert_eq!(losses.len(), 8);
    let later = losses[3..].iter().cloned().fold(f64::INFINITY, f64::min);
    assert!(later < losses[0] - 0.3, "loss did not fall: {losses:?}");
    for f in ["checkpoint.safetensors", "loss.png", "log.txt"] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    // The checkpoint is also a weights file for the other commands (teacher by default).
    let grid = temp_dir("train-falls-attn");
    let r = dino(&[
        "attention", "--image", s(&image("astronaut.jpg")), "--pretrained_weights", s(&out.join("checkpoint.safetensors")),
        "--image_size", "32", "--output_dir", s(&grid), "--device", "cpu",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(npy_shape(&grid.join("attention.npy")), vec![3, 8, 8]);
}

#[test]
fn killed_and_resumed_run_equals_uninterrupted_run() {
    let data = small_idx(64, "resume-data");
    let whole = temp_dir("resume-whole");
    let r = dino(&train_args(&data, &whole, "4"));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let reference = read_log(&whole);

    let cut = temp_dir("resume-cut");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_dino"))
        .args(train_args(&data, &cut, "4"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while read_log(&cut).is_empty() {
        assert!(start.elapsed() < Duration::from_secs(600), "first epoch never finished");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let done_before = read_log(&cut).len();
    assert!(done_before < 4, "the run finished before it could be killed");

    let r = dino(&train_args(&data, &cut, "4"));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("resuming from"), "{}", r.stderr);
    let resumed = read_log(&cut);
    assert_eq!(resumed.len(), 4);
    for (a, b) in reference.iter().zip(&resumed) {
        assert_eq!(a.epoch, b.epoch);
        assert_eq!(a.iter_losses, b.iter_losses, "epoch {} differs after resuming (killed after {done_before})", a.epoch);
    }

    // A resume with nothing left to train says so (it trained nothing, silently, before).
    let r = dino(&train_args(&data, &cut, "4"));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("nothing to train") && r.stderr.contains("--epochs 4"), "{}", r.stderr);
    let mut args = train_args(&data, &cut, "6");
    args.extend_from_slice(&["--max_iters", "8"]);
    let r = dino(&args);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("nothing to train") && r.stderr.contains("--max_iters 8"), "{}", r.stderr);
    assert_eq!(read_log(&cut).len(), 4, "a resume past --max_iters trained");

    // --max_iters counts the iterations done, also when it cut an epoch short (the count came
    // from the epochs before: 4 per epoch here, so a cut after 2 read as 4), and a resume goes
    // on inside the cut epoch: cut at 2 and resumed to 5, the run equals one that ran 5 (the
    // rest of the cut epoch was skipped before).
    let with_max = |out: &Path, epochs: &'static str, max: &'static str| {
        let mut args = train_args(&data, out, epochs);
        // Drop path on: its masks come from the device's generator, seeded per iteration.
        args.extend_from_slice(&["--max_iters", max, "--drop_path_rate", "0.1"]);
        dino(&args)
    };
    let short = temp_dir("resume-short");
    assert_eq!(with_max(&short, "2", "2").code, 0);
    let r = with_max(&short, "2", "2");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("has done 2 iterations"), "{}", r.stderr);
    let r = with_max(&short, "2", "5");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("epoch 1 was stopped by --max_iters after 32 of its 64 pictures"), "{}", r.stderr);
    let log = read_log(&short);
    assert_eq!(log.iter().map(|l| (l.epoch, l.iter_losses.len())).collect::<Vec<_>>(), [(0, 4), (1, 1)], "iterations per epoch");
    let uncut = temp_dir("resume-uncut");
    assert_eq!(with_max(&uncut, "2", "5").code, 0);
    let losses = |out: &Path| read_log(out).into_iter().flat_map(|l| l.iter_losses).collect::<Vec<f64>>();
    assert_eq!(losses(&short), losses(&uncut), "a run cut by --max_iters and resumed differs from the uncut run");
    let mean_losses = |out: &Path| read_log(out).into_iter().map(|l| l.train_loss).collect::<Vec<f64>>();
    assert_eq!(mean_losses(&short), mean_losses(&uncut), "the cut epoch's record differs from the uncut one's");
    // The tensors too (the header differs: its metadata holds --output_dir).
    let tensors = |out: &Path| {
        let bytes = std::fs::read(out.join("checkpoint.safetensors")).unwrap();
        let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        bytes[8 + header..].to_vec()
    };
    assert!(tensors(&short) == tensors(&uncut), "checkpoint tensors differ after the resume inside the cut epoch");
    // A run stopped between writing the checkpoint and log.txt (fault injection at the 7th
    // step of the atomic writes: the checkpoint of epoch 1's end is written, log.txt not) leaves
    // epoch 1's first part as its record: the resume says so rather than passing it as whole.
    let crashed = temp_dir("resume-crash");
    assert_eq!(with_max(&crashed, "2", "2").code, 0);
    let mut args = train_args(&data, &crashed, "2");
    args.extend_from_slice(&["--max_iters", "5", "--drop_path_rate", "0.1"]);
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_dino"))
        .args(&args)
        .env("DINO_CRASH_AT", "7")
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "the fault injection did not fire");
    let r = with_max(&crashed, "2", "5");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("the record of epoch 1 covers its first 32 pictures only"), "{}", r.stderr);
    assert!(tensors(&crashed) == tensors(&uncut), "the tensors after the crash and resume differ");
    // A resume with more pictures per iteration than the cut run: the position is kept in
    // pictures, so none is trained twice or left out. Epoch 2 stopped after 16 of 64 pictures:
    // with 32 per iteration one more iteration (pictures 16-47) ends it (the last 16 do not fill
    // a batch, as the official loader drops them); with 64 the rest fills none: next epoch.
    let with_batch = |batch: &'static str, epochs: &'static str| {
        let mut args = train_args(&data, &short, epochs);
        let at = args.iter().position(|a| *a == "--batch_size_per_gpu").unwrap() + 1;
        args[at] = batch;
        dino(&args)
    };
    let r = with_batch("32", "2");
    assert_eq!(r.code, 0, "{}", r.stderr);
    let log = read_log(&short);
    assert_eq!(log.iter().map(|l| (l.epoch, l.iter_losses.len())).collect::<Vec<_>>(), [(0, 4), (1, 2)]);
    let short2 = temp_dir("resume-short-64");
    for (max, batch) in [("5", "16"), ("0", "64")] {
        let mut args = train_args(&data, &short2, "3");
        args.extend_from_slice(&["--max_iters", max]);
        let at = args.iter().position(|a| *a == "--batch_size_per_gpu").unwrap() + 1;
        args[at] = batch;
        let r = dino(&args);
        assert_eq!(r.code, 0, "{}", r.stderr);
    }
    assert_eq!(read_log(&short2).iter().map(|l| (l.epoch, l.iter_losses.len())).collect::<Vec<_>>(), [(0, 4), (1, 1), (2, 1)]);
    // Whole epochs are not taken for cut ones, whatever the batch size of the resume.
    let mut args = train_args(&data, &whole, "5");
    let at = args.iter().position(|a| *a == "--batch_size_per_gpu").unwrap() + 1;
    args[at] = "8";
    let r = dino(&args);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!r.stderr.contains("by --max_iters"), "{}", r.stderr);
}

#[test]
fn non_finite_loss_stops_and_keeps_the_last_checkpoint() {
    let data = small_idx(32, "nan-data");
    let out = temp_dir("nan");
    let r = dino(&train_args(&data, &out, "1"));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let before = std::fs::read(out.join("checkpoint.safetensors")).unwrap();
    let mut args = train_args(&data, &out, "3");
    args.extend_from_slice(&["--lr", "1e30", "--clip_grad", "0"]);
    let r = dino(&args);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let line = r.error_line();
    assert!(line.contains("loss is") && line.contains("checkpoint.safetensors"), "{line}");
    assert_eq!(std::fs::read(out.join("checkpoint.safetensors")).unwrap(), before, "checkpoint changed");
}

#[test]
fn unreadable_files_in_an_image_folder_are_skipped_and_counted() {
    let data = temp_dir("folder-data");
    for (class, files) in [("cat", ["chelsea.jpg", "coffee.png"]), ("person", ["astronaut.jpg", "gray.png"])] {
        std::fs::create_dir_all(data.join(class)).unwrap();
        for f in files {
            std::fs::copy(image(f), data.join(class).join(f)).unwrap();
        }
    }
    std::fs::copy(image("not-an-image.jpg"), data.join("cat").join("broken.jpg")).unwrap();
    let out = temp_dir("folder-out");
    let r = dino(&[
        "train", "--data_path", s(&data), "--output_dir", s(&out), "--preset", "small", "--epochs", "1",
        "--batch_size_per_gpu", "5", "--device", "cpu", "--skip_eval",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("skipped 1 unreadable") && r.stderr.contains("broken.jpg"), "{}", r.stderr);
    assert_eq!(read_log(&out).len(), 1);

    // Batches of one: the broken picture's batch is skipped, so the epoch is one iteration
    // short. That is not a cut by --max_iters, and a resume must not say it is.
    let ones = temp_dir("folder-ones");
    let run = |epochs: &str| {
        dino(&[
            "train", "--data_path", s(&data), "--output_dir", s(&ones), "--preset", "small", "--epochs", epochs,
            "--warmup_epochs", "0", "--batch_size_per_gpu", "1", "--device", "cpu", "--skip_eval",
        ])
    };
    assert_eq!(run("1").code, 0);
    let r = run("2");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!r.stderr.contains("by --max_iters"), "{}", r.stderr);
    assert_eq!(read_log(&ones).len(), 2);
}
