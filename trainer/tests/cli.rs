//! The `dino` command line on real pictures and real checkpoints, and what users see on bad input.

mod common;
use common::*;

const HEADS: &str = "3"; // the small fixtures have 3 heads of 32 (not the official 64)

fn attention(image_path: &str, out: &std::path::Path, extra: &[&str]) -> Output {
    let weights = fixture("tiny16_full.pth");
    let mut args = vec![
        "attention", "--image", image_path, "--pretrained_weights", s(&weights), "--num_heads", HEADS,
        "--output_dir", s(out), "--device", "cpu",
    ];
    args.extend_from_slice(extra);
    dino(&args)
}

#[test]
fn attention_on_a_real_photo_writes_every_picture() {
    let out = temp_dir("attn-photo");
    let r = attention(s(&image("astronaut.jpg")), &out, &["--image_size", "224"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    for f in ["img.png", "attn-mean-overlay.png", "attention-grid.png", "attention.npy"] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    for j in 0..3 {
        assert!(out.join(format!("attn-head{j}.png")).exists());
        assert!(out.join(format!("mask_th0.6_head{j}.png")).exists());
    }
    assert_eq!(npy_shape(&out.join("attention.npy")), vec![3, 14, 14]);
    // CLS attention to the patches: positive, and at most the whole softmax mass per head.
    let v = npy_values(&out.join("attention.npy"));
    for h in 0..3 {
        let sum: f32 = v[h * 196..(h + 1) * 196].iter().sum();
        assert!(v[h * 196..(h + 1) * 196].iter().all(|&x| x > 0.0) && sum < 1.0 && sum > 0.1, "head {h} sums to {sum}");
    }
    let grid = image::open(out.join("attention-grid.png")).unwrap().to_rgb8();
    // Two rows of 5 cells, each under an 18 px label strip, 4 px apart.
    assert_eq!((grid.width(), grid.height()), (5 * 224 + 4 * 4, 2 * (224 + 18) + 4));
    // Every label strip of the top row holds text ("picture", "mean of 3 heads", "head j").
    for c in 0..5u32 {
        let dark = (0..18).flat_map(|y| (0..224).map(move |x| (c * 228 + x, y))).filter(|&(x, y)| grid.get_pixel(x, y)[0] < 128).count();
        assert!(dark > 20, "label of cell {c} has {dark} dark pixels");
    }
}

#[test]
fn non_square_size_gives_a_non_square_grid() {
    let out = temp_dir("attn-nonsquare");
    let r = attention(s(&image("chelsea.jpg")), &out, &["--image_size", "480", "320", "--threshold", "0.5"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(npy_shape(&out.join("attention.npy")), vec![3, 30, 20]);
    assert!(out.join("mask_th0.5_head2.png").exists());
}

#[test]
fn other_colour_types_are_converted() {
    // One size is the shorter side: the 96x96 pictures give 6 x 6 patches of 16, coffee.png
    // (200x133) gives 96 x int(96 * 200 / 133) = 96 x 144 px, 6 x 9 patches.
    for (f, grid) in [("gray.png", [6, 6]), ("gray16.png", [6, 6]), ("rgba.png", [6, 6]), ("cmyk.jpg", [6, 6]), ("palette.gif", [6, 6]), ("coffee.png", [6, 9])] {
        let out = temp_dir(&format!("attn-{f}"));
        let r = attention(s(&image(f)), &out, &["--image_size", "96"]);
        assert_eq!(r.code, 0, "{f}: {}", r.stderr);
        assert_eq!(npy_shape(&out.join("attention.npy")), vec![3, grid[0], grid[1]], "{f}");
    }
}

#[test]
fn bad_pictures_give_one_clear_line_and_exit_2() {
    let out = temp_dir("attn-bad");
    let cases = [
        ("not-an-image.jpg", "not an image"),
        ("empty.jpg", "empty"),
        ("truncated.jpg", "cannot decode"),
        ("tiny.png", "smaller than one 16x16 patch"),
        ("does-not-exist.png", "cannot read"),
    ];
    for (f, what) in cases {
        let r = attention(s(&image(f)), &out, &[]);
        assert_eq!(r.code, 2, "{f}: {}", r.stderr);
        let line = r.error_line();
        assert!(line.contains(f) && line.contains(what), "{f}: {line}");
    }
}

#[test]
fn bad_weights_give_one_clear_line_and_exit_2() {
    let out = temp_dir("attn-badweights");
    let photo = image("astronaut.jpg");
    let not_weights = image("chelsea.jpg");
    let r = dino(&["attention", "--image", s(&photo), "--pretrained_weights", s(&not_weights), "--output_dir", s(&out), "--device", "cpu"]);
    assert_eq!(r.code, 2);
    let line = r.error_line();
    assert!(line.contains("chelsea.jpg") && line.contains("not a weights file"), "{line}");

    let weights = fixture("tiny16_pretrain.pth");
    let r = dino(&[
        "attention", "--image", s(&photo), "--pretrained_weights", s(&weights), "--arch", "vit_small",
        "--output_dir", s(&out), "--device", "cpu",
    ]);
    assert_eq!(r.code, 2);
    let line = r.error_line();
    assert!(line.contains("tiny16_pretrain.pth") && line.contains("shape mismatch") && line.contains("blocks.0.attn.qkv.weight"), "{line}");
}

#[test]
fn embed_a_folder_skips_and_counts_bad_files() {
    let dir = temp_dir("embed-src");
    for f in ["astronaut.jpg", "chelsea.jpg", "coffee.png", "not-an-image.jpg"] {
        std::fs::copy(image(f), dir.join(f)).unwrap();
    }
    let out = temp_dir("embed-out").join("features.npy");
    let weights = fixture("tiny8_pretrain.pth");
    let r = dino(&[
        "embed", "--data_path", s(&dir), "--pretrained_weights", s(&weights), "--num_heads", HEADS, "--image_size", "64",
        "--output", s(&out), "--device", "cpu",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(npy_shape(&out), vec![3, 96]);
    assert!(r.stderr.contains("skipped 1 picture(s) (unreadable") && r.stderr.contains("not-an-image.jpg"), "{}", r.stderr);
    let names = std::fs::read_to_string(out.with_extension("txt")).unwrap();
    assert_eq!(names.lines().count(), 3);
}

#[test]
fn exported_weights_carry_their_architecture() {
    let out = temp_dir("export");
    let file = out.join("model.safetensors");
    let r = dino(&["export", "--pretrained_weights", s(&fixture("tiny16_full.pth")), "--num_heads", HEADS, "--output", s(&file)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // No --num_heads needed any more: the file says it.
    let r = dino(&[
        "attention", "--image", s(&image("astronaut.jpg")), "--pretrained_weights", s(&file), "--image_size", "128",
        "--output_dir", s(&out), "--device", "cpu",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(npy_shape(&out.join("attention.npy")), vec![3, 8, 8]);
}
