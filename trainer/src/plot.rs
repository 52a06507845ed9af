//! `loss.png`: the training curves of a run, drawn with `plotters` and a bundled font (DejaVu
//! Sans, `trainer/assets/fonts`) so that it renders the same offline on any machine.
//!
//! Six panels: the DINO loss (every iteration and the epoch means), the paper's collapse
//! diagnostics (teacher entropy and KL(teacher || student) per epoch against ln(out_dim),
//! Section 5.3 / Fig. 7), the k-NN accuracy when evaluated (with the initial teacher's floor),
//! and the schedules: learning rate, teacher temperature and teacher momentum per iteration.

use std::ops::Range;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;

const FONT: &str = "sans-serif";
const W: u32 = 1320;
const H: u32 = 720;
const GREY: RGBColor = RGBColor(170, 170, 170);
const C_BLUE: RGBColor = RGBColor(31, 119, 180);
const C_ORANGE: RGBColor = RGBColor(255, 127, 14);
const C_GREEN: RGBColor = RGBColor(44, 160, 44);
const C_RED: RGBColor = RGBColor(214, 39, 40);
const C_PURPLE: RGBColor = RGBColor(148, 103, 189);

/// Everything the figure shows; slices may be empty (the panel then says so).
pub struct TrainingCurves<'a> {
    /// Loss of every iteration done so far.
    pub iter_losses: &'a [f64],
    pub iters_per_epoch: usize,
    /// Per finished epoch: mean loss, mean teacher entropy, mean KL (nats).
    pub epoch_losses: &'a [f64],
    pub epoch_entropy: &'a [f64],
    pub epoch_kl: &'a [f64],
    /// ln(out_dim): the entropy of a uniform teacher.
    pub max_entropy: f64,
    /// (epochs done, k-NN top-1 %) of each evaluation; epoch 0 is the initial teacher.
    pub knn: &'a [(f64, f64)],
    /// The k for the k-NN curve's legend.
    pub knn_k: usize,
    /// The whole run's schedules, one value per iteration.
    pub lr: &'a [f64],
    pub teacher_temp: &'a [f64],
    pub momentum: &'a [f64],
}

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let bytes: &'static [u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");
        // Only fails on a malformed font, which include_bytes! rules out.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, bytes);
    });
}

/// Draw the figure into an RGB picture (`W` x `H`).
///
/// # Errors
/// A drawing error of `plotters` (none is expected for finite inputs; non-finite values are skipped).
pub fn training_curves(c: &TrainingCurves) -> anyhow::Result<image::RgbImage> {
    register_font();
    let mut buf = vec![255u8; (W * H * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (W, H)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let panels = root.split_evenly((2, 3));
        let e = c.iters_per_epoch.max(1) as f64;
        // x = the iteration a value belongs to: per iteration, or at the end of its epoch.
        let per_iter = |v: &[f64]| -> Vec<(f64, f64)> { v.iter().enumerate().map(|(i, x)| (i as f64 + 1.0, *x)).collect() };
        let per_epoch = |v: &[f64]| -> Vec<(f64, f64)> { v.iter().enumerate().map(|(i, x)| ((i as f64 + 1.0) * e, *x)).collect() };
        let iters = per_iter(c.iter_losses);
        let means = per_epoch(c.epoch_losses);
        let total = c.lr.len().max(c.iter_losses.len()).max(1) as f64;
        panel(
            &panels[0],
            "DINO loss",
            "iteration",
            "cross-entropy (nats)",
            0.0..total,
            &[
                Series { name: "per iteration", points: iters, color: GREY, marker: false },
                Series { name: "epoch mean", points: means, color: C_BLUE, marker: true },
            ],
        )?;
        let (entropy, kl) = (per_epoch(c.epoch_entropy), per_epoch(c.epoch_kl));
        let uniform = vec![(0.0, c.max_entropy), (total, c.max_entropy)];
        panel(
            &panels[1],
            "Collapse diagnostics (epoch means)",
            "iteration",
            "nats",
            0.0..total,
            &[
                Series { name: "teacher entropy", points: entropy, color: C_ORANGE, marker: true },
                Series { name: "KL(teacher || student)", points: kl, color: C_PURPLE, marker: true },
                Series { name: "ln(out_dim): uniform", points: uniform, color: GREY, marker: false },
            ],
        )?;
        let knn: Vec<(f64, f64)> = c.knn.iter().map(|(ep, v)| (ep * e, *v)).collect();
        let floor: Vec<(f64, f64)> =
            c.knn.iter().find(|(ep, _)| *ep == 0.0).map(|(_, v)| vec![(0.0, *v), (total, *v)]).unwrap_or_default();
        let knn_name = format!("{}-NN top-1 (teacher)", c.knn_k);
        panel(
            &panels[2],
            "k-NN accuracy on the validation split",
            "iteration",
            "top-1 (%)",
            0.0..total,
            &[
                Series { name: &knn_name, points: knn, color: C_GREEN, marker: true },
                Series { name: "initial teacher (floor)", points: floor, color: GREY, marker: false },
            ],
        )?;
        panel(
            &panels[3],
            "Learning rate",
            "iteration",
            "lr",
            0.0..total,
            &[Series { name: "lr (x batch / 256)", points: per_iter(c.lr), color: C_BLUE, marker: false }],
        )?;
        panel(
            &panels[4],
            "Teacher temperature",
            "iteration",
            "temperature",
            0.0..total,
            &[Series { name: "teacher temperature", points: per_iter(c.teacher_temp), color: C_RED, marker: false }],
        )?;
        panel(
            &panels[5],
            "Teacher momentum (EMA)",
            "iteration",
            "momentum",
            0.0..total,
            &[Series { name: "teacher momentum", points: per_iter(c.momentum), color: C_PURPLE, marker: false }],
        )?;
        root.present().map_err(err)?;
    }
    image::RgbImage::from_raw(W, H, buf).ok_or_else(|| anyhow::anyhow!("plot buffer has the wrong size"))
}

struct Series<'a> {
    name: &'a str,
    points: Vec<(f64, f64)>,
    color: RGBColor,
    marker: bool,
}

fn err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing the plot: {e}")
}

/// One titled chart with axes, tick labels, axis titles and a legend.
fn panel(
    area: &DrawingArea<BitMapBackend, Shift>,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    x_range: Range<f64>,
    series: &[Series],
) -> anyhow::Result<()> {
    let finite: Vec<f64> = series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).filter(|v| v.is_finite()).collect();
    let (lo, hi) = match (finite.iter().cloned().reduce(f64::min), finite.iter().cloned().reduce(f64::max)) {
        (Some(lo), Some(hi)) if hi > lo => {
            let pad = (hi - lo) * 0.08;
            (lo - pad, hi + pad)
        }
        (Some(v), Some(_)) => (v - v.abs().max(1e-3) * 0.1, v + v.abs().max(1e-3) * 0.1),
        _ => (0.0, 1.0),
    };
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 17))
        .margin(8)
        .x_label_area_size(38)
        .y_label_area_size(62)
        .build_cartesian_2d(x_range, lo..hi)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .label_style((FONT, 12))
        .axis_desc_style((FONT, 13))
        .x_labels(6)
        .y_labels(6)
        .y_label_formatter(&|v| tick(*v))
        .x_label_formatter(&|v| format!("{v:.0}"))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(err)?;
    let mut any = false;
    for s in series {
        let points: Vec<(f64, f64)> = s.points.iter().cloned().filter(|p| p.1.is_finite()).collect();
        if points.is_empty() {
            continue;
        }
        any = true;
        let color = s.color;
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(err)?
            .label(s.name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        if s.marker {
            chart.draw_series(points.iter().map(|p| Circle::new(*p, 3, color.filled()))).map_err(err)?;
        }
    }
    if any {
        chart
            .configure_series_labels()
            .label_font((FONT, 12))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(err)?;
    } else {
        area.draw(&Text::new("not measured in this run", (W as i32 / 9, H as i32 / 5), (FONT, 14).into_font().color(&GREY)))
            .map_err(err)?;
    }
    Ok(())
}

/// Tick labels a reader can use: 3 significant digits, scientific for tiny values.
fn tick(v: f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-2..1e4).contains(&a) {
        format!("{v:.1e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The figure renders with text (dark pixels in the title band) and all six panels.
    #[test]
    fn curves_render_with_labels() {
        let losses: Vec<f64> = (0..40).map(|i| 6.0 - i as f64 * 0.05).collect();
        let sched: Vec<f64> = (0..40).map(|i| 1e-3 * (1.0 - i as f64 / 40.0)).collect();
        let img = training_curves(&TrainingCurves {
            iter_losses: &losses,
            iters_per_epoch: 10,
            epoch_losses: &[5.8, 5.3, 4.8, 4.2],
            epoch_entropy: &[5.0, 4.0, 3.0, 2.5],
            epoch_kl: &[0.5, 0.9, 1.1, 1.2],
            max_entropy: 1024f64.ln(),
            knn: &[(0.0, 47.0), (2.0, 55.0), (4.0, 62.0)],
            knn_k: 20,
            lr: &sched,
            teacher_temp: &[0.04; 40],
            momentum: &sched,
        })
        .unwrap();
        assert_eq!(img.dimensions(), (W, H));
        let dark = img.pixels().filter(|p| p.0.iter().all(|&c| c < 80)).count();
        assert!(dark > 2000, "too little text and axes drawn: {dark} dark pixels");
    }
}

/// Height in pixels of the label strip above each cell of [`labelled_grid`].
const LABEL_H: u32 = 18;

/// `cells` (all the size of the first) laid out `cols` per row by the shared
/// [`dino_shared::attention_maps::composite`], each under its label (DejaVu Sans, 12 px; a
/// label wider than its cell is cut at the cell's edge). Used for `attention-grid.png`.
///
/// # Errors
/// A drawing error of `plotters`.
pub fn labelled_grid(cells: &[image::RgbImage], labels: &[String], cols: usize) -> anyhow::Result<image::RgbImage> {
    register_font();
    let Some(first) = cells.first() else { return Ok(image::RgbImage::new(1, 1)) };
    let (w, h) = first.dimensions();
    let framed: Vec<image::RgbImage> = cells
        .iter()
        .map(|c| {
            let mut f = image::RgbImage::from_pixel(w, h + LABEL_H, image::Rgb([255, 255, 255]));
            image::imageops::replace(&mut f, c, 0, LABEL_H as i64);
            f
        })
        .collect();
    let mut grid = dino_shared::attention_maps::composite(&framed, cols);
    let (gw, gh) = grid.dimensions();
    let cols = cols.clamp(1, cells.len());
    // The gap composite() leaves between cells.
    let gap = if cols > 1 { (gw - cols as u32 * w) / (cols as u32 - 1) } else { 0 };
    let rows = cells.len().div_ceil(cols) as u32;
    let vgap = if rows > 1 { (gh - rows * (h + LABEL_H)) / (rows - 1) } else { 0 };
    {
        let root = BitMapBackend::with_buffer(grid.as_mut(), (gw, gh)).into_drawing_area();
        let style = TextStyle::from((FONT, 12).into_font()).color(&BLACK);
        for (i, label) in labels.iter().enumerate().take(cells.len()) {
            let (c, r) = ((i % cols) as u32, (i / cols) as u32);
            let (x, y) = (c * (w + gap), r * (h + LABEL_H + vgap));
            let cell = root.clone().shrink((x as i32, y as i32), (w, LABEL_H));
            cell.draw_text(label, &style, (2, 3)).map_err(err)?;
        }
        root.present().map_err(err)?;
    }
    Ok(grid)
}
