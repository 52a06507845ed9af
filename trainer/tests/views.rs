//! DINOv2 checkpoints through the command line, and the views beside attention: `dino
//! attention --layer`, `dino pca`, `dino similarity`, `dino video`, `dino export` of a DINOv2
//! file. The numbers themselves are checked against PyTorch / numpy in
//! shared/tests/parity_v2.rs; here: the wiring, the files written and the errors users see.

mod common;
use common::*;

use image::codecs::gif::{GifDecoder, GifEncoder};
use image::{AnimationDecoder, Delay, Frame};

fn v2(file: &str) -> String {
    s(&fixture(file)).to_string()
}

#[test]
fn dinov2_attention_takes_the_patches_after_the_registers() {
    let out = temp_dir("v2-attn");
    for layer in ["0", "1"] {
        let r = dino(&[
            "attention", "--image", s(&image("astronaut.jpg")), "--pretrained_weights", &v2("v2reg4_official.pth"),
            "--image_size", "224", "--layer", layer, "--output_dir", s(&out), "--device", "cpu",
        ]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        // 2 heads on 16 x 16 patches: the CLS row without CLS and the 4 registers.
        assert_eq!(npy_shape(&out.join("attention.npy")), vec![2, 16, 16]);
        let v = npy_values(&out.join("attention.npy"));
        let sum: f32 = v[..256].iter().sum();
        assert!(v.iter().all(|&x| x > 0.0) && sum < 1.0, "layer {layer}: head 0 sums to {sum}");
    }
    let r = dino(&[
        "attention", "--image", s(&image("astronaut.jpg")), "--pretrained_weights", &v2("v2reg4_official.pth"),
        "--layer", "2", "--output_dir", s(&out), "--device", "cpu",
    ]);
    assert_eq!(r.code, 2);
    assert!(r.error_line().contains("--layer: layer 2 does not exist: the model has 2 blocks"), "{}", r.stderr);
}

#[test]
fn pca_of_two_pictures_writes_pictures_and_arrays() {
    let out = temp_dir("v2-pca");
    let r = dino(&[
        "pca", "--image", s(&image("astronaut.jpg")), "--image", s(&image("chelsea.jpg")), "--pretrained_weights",
        &v2("v2reg4_hf.safetensors"), "--image_size", "224", "--foreground_threshold", "0.3", "--output_dir", s(&out),
        "--device", "cpu",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(npy_shape(&out.join("pca_components.npy")), vec![3, 128]);
    assert_eq!(npy_shape(&out.join("pca_rgb0.npy")), vec![16, 16, 3]);
    // chelsea.jpg is 320 x 213: the shorter side to 224 gives 224 x 336, 16 x 24 patches.
    assert_eq!(npy_shape(&out.join("pca_rgb1.npy")), vec![16, 24, 3]);
    // Colours are scaled over both pictures together: each channel spans [0, 1] jointly.
    let (a, b) = (npy_values(&out.join("pca_rgb0.npy")), npy_values(&out.join("pca_rgb1.npy")));
    for c in 0..3 {
        let all: Vec<f32> = a.iter().skip(c).step_by(3).chain(b.iter().skip(c).step_by(3)).cloned().collect();
        let (lo, hi) = all.iter().fold((f32::MAX, f32::MIN), |(l, h), &x| (l.min(x), h.max(x)));
        assert!(lo.abs() < 1e-6 && (hi - 1.0).abs() < 1e-6, "channel {c} spans {lo}..{hi}");
    }
    for f in ["pca0.png", "pca1.png", "img0.png", "pca-grid.png"] {
        assert!(out.join(f).exists(), "{f} missing");
    }
}

#[test]
fn similarity_by_grid_place_or_pixel() {
    let out = temp_dir("v2-sim");
    let (photo, weights) = (image("astronaut.jpg"), fixture("v2swiglu_chunked.pth"));
    let run = |extra: &[&str]| {
        let mut args = vec![
            "similarity", "--image", s(&photo), "--pretrained_weights", s(&weights),
            "--image_size", "224", "--output_dir", s(&out), "--device", "cpu",
        ];
        args.extend_from_slice(extra);
        dino(&args)
    };
    let r = run(&["--query", "3", "5"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let by_query = npy_values(&out.join("similarity.npy"));
    assert_eq!(npy_shape(&out.join("similarity.npy")), vec![16, 16]);
    assert!((by_query[3 * 16 + 5] - 1.0).abs() < 1e-5, "a patch is its own best match");
    // Pixel (75, 45) lies in patch row 45 / 14 = 3, column 75 / 14 = 5.
    let r = run(&["--at", "75", "45"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(npy_values(&out.join("similarity.npy")), by_query);
    let r = run(&["--target", s(&image("chelsea.jpg")), "--query", "3", "5"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(npy_shape(&out.join("similarity.npy")), vec![16, 24]);
    for (extra, flag) in [(vec!["--query", "16", "0"], "--query"), (vec!["--at", "224", "0"], "--at")] {
        let r = run(&extra);
        assert_eq!(r.code, 2, "{extra:?}");
        assert!(r.error_line().contains(flag), "{}", r.stderr);
    }
}

/// `dino export` of an HF-layout DINOv2 file gives the page's format, and the exported model
/// draws the same attention as the original file (f32 export: equal to float rounding).
#[test]
fn exported_dinov2_draws_the_same_attention() {
    let out = temp_dir("v2-export");
    let file = out.join("v2.safetensors");
    let r = dino(&["export", "--pretrained_weights", &v2("v2reg4_hf.safetensors"), "--dtype", "f32", "--output", s(&file)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("_reg4_ls"), "{}", r.stderr);
    let attention = |weights: &str, dir: &str| {
        let dir = out.join(dir);
        let r = dino(&[
            "attention", "--image", s(&image("chelsea.jpg")), "--pretrained_weights", weights, "--image_size", "112",
            "--output_dir", s(&dir), "--device", "cpu",
        ]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        npy_values(&dir.join("attention.npy"))
    };
    let (a, b) = (attention(&v2("v2reg4_official.pth"), "official"), attention(s(&file), "exported"));
    let d = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
    assert!(d < 1e-6, "exported model differs by {d}");
}

fn write_gif(path: &std::path::Path, frames: usize) {
    let photo = image::open(image("astronaut.jpg")).unwrap().to_rgba8();
    let file = std::fs::File::create(path).unwrap();
    let mut encoder = GifEncoder::new(file);
    let frames: Vec<Frame> = (0..frames as u32)
        .map(|i| {
            let crop = image::imageops::crop_imm(&photo, 20 * i, 10 * i, 112, 84).to_image();
            Frame::from_parts(crop, 0, 0, Delay::from_numer_denom_ms(120, 1))
        })
        .collect();
    encoder.encode_frames(frames).unwrap();
}

#[test]
fn video_from_a_gif_and_from_a_frame_folder() {
    let out = temp_dir("v2-video");
    let gif = out.join("clip.gif");
    write_gif(&gif, 3);
    let r = dino(&[
        "video", "--input", s(&gif), "--pretrained_weights", &v2("v2reg4_official.pth"), "--output_dir", s(&out.join("a")),
        "--device", "cpu",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let decoded = GifDecoder::new(std::io::BufReader::new(std::fs::File::open(out.join("a/attention.gif")).unwrap())).unwrap();
    let frames = decoded.into_frames().collect_frames().unwrap();
    // 112 x 84 frames are cropped to the 14 px patch grid: 112 x 84.
    assert_eq!(frames.len(), 3);
    assert_eq!(frames[0].buffer().dimensions(), (112, 84));
    assert_eq!(frames[1].delay().numer_denom_ms(), (120, 1), "the GIF's own frame delay is kept");
    for i in 0..3 {
        assert!(out.join(format!("a/attn-{i:05}.png")).exists() && out.join(format!("a/mask-{i:05}.png")).exists());
    }
    // A folder of frames with a file that is not a picture: skipped and counted.
    let frames_dir = out.join("frames");
    std::fs::create_dir_all(&frames_dir).unwrap();
    std::fs::copy(image("astronaut.jpg"), frames_dir.join("0001.jpg")).unwrap();
    std::fs::copy(image("chelsea.jpg"), frames_dir.join("0002.jpg")).unwrap();
    std::fs::copy(image("not-an-image.jpg"), frames_dir.join("0003.jpg")).unwrap();
    let r = dino(&[
        "video", "--input", s(&frames_dir), "--pretrained_weights", &v2("v2reg4_official.pth"), "--image_size", "112",
        "--fps", "5", "--output_dir", s(&out.join("b")), "--device", "cpu",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("2 frames (1 skipped"), "{}", r.stderr);
    // A video file without ffmpeg, and a file that is no clip at all: one line, exit 2.
    let mp4 = out.join("clip.mp4");
    std::fs::write(&mp4, b"not a video").unwrap();
    let ffmpeg = std::process::Command::new("ffmpeg").arg("-version").output().is_ok_and(|o| o.status.success());
    for (input, needle) in [(s(&mp4), if ffmpeg { "ffmpeg could not read it" } else { "needs ffmpeg on PATH" }), (s(&image("coffee.png")), "not a folder of frames")] {
        let r = dino(&["video", "--input", input, "--pretrained_weights", &v2("v2reg4_official.pth"), "--output_dir", s(&out.join("c")), "--device", "cpu"]);
        assert_eq!(r.code, 2, "{input}");
        assert!(r.error_line().contains(needle), "{}", r.stderr);
    }
}

/// Faults found by review, each with its sibling: sizes that would take tens of GB (`--image_size`
/// on every command that runs the model, a GIF whose header claims a huge canvas), a frame rate
/// that cannot be a duration, a `--patch_size` the file contradicts, two copies of one tensor,
/// NaN weights; HF classifier files load; a shorter clip never reuses an earlier run's frames; a
/// frame smaller than one patch is skipped and counted.
#[test]
fn faults_found_in_review_are_one_line_errors() {
    use dino_shared::weights::{parse_safetensors, serialize_safetensors, ExportDType};
    let out = temp_dir("v2-faults");
    let w = v2("v2reg4_official.pth");
    let photo = image("astronaut.jpg");
    let expect_error = |args: &[&str], needle: &str| {
        let r = dino(args);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        let line = r.error_line();
        assert!(line.contains(needle), "{args:?}: {line}");
    };
    let o = s(&out);
    for cmd in ["attention", "pca"] {
        expect_error(&[cmd, "--image", s(&photo), "--pretrained_weights", &w, "--image_size", "100000", "--output_dir", o, "--device", "cpu"], "--image_size");
        expect_error(&[cmd, "--image", s(&photo), "--pretrained_weights", &w, "--image_size", "3000", "--output_dir", o, "--device", "cpu"], "one block's attention or MLP activations would take");
    }
    expect_error(&["embed", "--data_path", s(&repo().join("tests/images")), "--pretrained_weights", &w, "--image_size", "5000", "--output", s(&out.join("f.npy")), "--device", "cpu"], "--image_size");
    expect_error(&["attention", "--image", s(&photo), "--pretrained_weights", &w, "--patch_size", "16", "--output_dir", o, "--device", "cpu"], "--patch_size 16 does not match");
    // A GIF whose logical screen claims 65535 x 65535 pixels.
    let gif = out.join("clip.gif");
    write_gif(&gif, 3);
    let mut bytes = std::fs::read(&gif).unwrap();
    bytes[6..10].copy_from_slice(&[255, 255, 255, 255]);
    let huge = out.join("huge.gif");
    std::fs::write(&huge, bytes).unwrap();
    expect_error(&["video", "--input", s(&huge), "--pretrained_weights", &w, "--output_dir", o, "--device", "cpu"], "larger than 512 MiB");
    expect_error(&["video", "--input", s(&gif), "--fps", "1e-300", "--pretrained_weights", &w, "--output_dir", o, "--device", "cpu"], "--fps");
    // Weights: a NaN, two copies of one tensor (timm's reg_token beside register_tokens); an HF
    // classifier file (prefix and head) loads.
    let (sd, _) = parse_safetensors(&std::fs::read(fixture("v2reg4_hf.safetensors")).unwrap()).unwrap();
    let write = |name: &str, sd: &dino_shared::state_dict::StateDict| {
        let path = out.join(name);
        std::fs::write(&path, serialize_safetensors(sd, ExportDType::F32, Default::default())).unwrap();
        path
    };
    let mut nan = sd.clone();
    nan.get_mut("encoder.layer.1.mlp.fc2.weight").unwrap().data[7] = f32::NAN;
    let nan = write("nan.safetensors", &nan);
    expect_error(&["attention", "--image", s(&photo), "--pretrained_weights", s(&nan), "--output_dir", o, "--device", "cpu"], "NaN");
    let (timm, _) = parse_safetensors(&std::fs::read(fixture("v2reg4_timm.safetensors")).unwrap()).unwrap();
    let mut twice = timm.clone();
    twice.insert("register_tokens".into(), timm["reg_token"].clone());
    let twice = write("twice.safetensors", &twice);
    expect_error(&["attention", "--image", s(&photo), "--pretrained_weights", s(&twice), "--output_dir", o, "--device", "cpu"], "two copies of one tensor");
    let mut classifier: dino_shared::state_dict::StateDict = sd.iter().map(|(k, t)| (format!("dinov2.{k}"), t.clone())).collect();
    classifier.insert("classifier.weight".into(), dino_shared::state_dict::HostTensor::new(vec![10, 256], vec![0.1; 2560]));
    let classifier = write("classifier.safetensors", &classifier);
    let r = dino(&["attention", "--image", s(&photo), "--pretrained_weights", s(&classifier), "--image_size", "112", "--output_dir", o, "--device", "cpu"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // A 3-frame clip, then a 1-frame one into the same folder: 1 frame, no leftovers.
    let one = out.join("one.gif");
    write_gif(&one, 1);
    let dir = out.join("video");
    for (clip, frames) in [(&gif, 3), (&one, 1)] {
        let r = dino(&["video", "--input", s(clip), "--pretrained_weights", &w, "--output_dir", s(&dir), "--device", "cpu"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let decoded = GifDecoder::new(std::io::BufReader::new(std::fs::File::open(dir.join("attention.gif")).unwrap())).unwrap();
        assert_eq!(decoded.into_frames().count(), frames);
    }
    assert!(!dir.join("attn-00001.png").exists(), "a frame of the earlier, longer clip is left");
    // A frame smaller than one 14 px patch in a folder: skipped and counted.
    let frames = out.join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    std::fs::copy(&photo, frames.join("a.jpg")).unwrap();
    std::fs::copy(image("tiny.png"), frames.join("b.png")).unwrap();
    let r = dino(&["video", "--input", s(&frames), "--pretrained_weights", &w, "--image_size", "112", "--output_dir", s(&out.join("v2")), "--device", "cpu"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("1 frames (1 skipped"), "{}", r.stderr);
}

/// `dino video`'s per-frame maps equal official `video_generation.py`'s (the head mean of the
/// last layer's CLS attention), computed by PyTorch in tools/reference.py on the same two frames
/// (coffee.png and its mirror image, at their own size) with the tiny16 fixture.
#[test]
fn video_maps_equal_the_official_script() {
    let out = temp_dir("video-ref");
    let frames = out.join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    let coffee = image::open(image("coffee.png")).unwrap().to_rgb8();
    coffee.save(frames.join("0.png")).unwrap();
    image::imageops::flip_horizontal(&coffee).save(frames.join("1.png")).unwrap();
    let r = dino(&[
        "video", "--input", s(&frames), "--pretrained_weights", s(&fixture("tiny16_pretrain.pth")), "--num_heads", "3",
        "--output_dir", s(&out.join("v")), "--device", "cpu",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(npy_shape(&out.join("v/attention.npy")), vec![2, 8, 12]);
    let ours = npy_values(&out.join("v/attention.npy"));
    let bytes = std::fs::read(fixture("video_ref.safetensors")).unwrap();
    let (refs, _) = dino_shared::weights::parse_safetensors(&bytes).unwrap();
    let want = &refs["mean_attention"].data;
    let d = ours.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(d <= 1e-5, "per-frame maps differ from the official script's by {d}");
}
