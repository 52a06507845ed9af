//! What a ViT's patch features look like, beside its attention: the PCA view (the first three
//! principal components of the last layer's patch tokens as RGB, the DINOv2 paper's figure 1
//! and its demo notebooks) and patch similarity (cosine similarity of one patch token with
//! every patch of the same or another picture). Pure host code on plain slices, shared by the
//! CLI (`dino pca`, `dino similarity`) and the web page.
//!
//! The numbers follow `np.linalg.svd` of the centred features (tools/reference.py writes the
//! reference): components are the top right-singular vectors, each signed so that its entry of
//! largest magnitude is positive (a principal direction has no sign of its own; this makes the
//! colours reproducible), and the RGB picture is each component's projection min-max scaled
//! over every picture of the fit together, so that colours correspond between pictures.

use image::{Rgb, RgbImage};

use crate::attention_maps::{heatmap, overlay};

/// Patch tokens of one picture: `values` [patches, dim] row-major, on a `grid_h x grid_w` grid.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchFeatures {
    pub grid_h: usize,
    pub grid_w: usize,
    pub dim: usize,
    pub values: Vec<f32>,
}

impl PatchFeatures {
    /// # Errors
    /// `values` does not hold `grid_h * grid_w` rows of `dim`.
    pub fn new(grid_h: usize, grid_w: usize, dim: usize, values: Vec<f32>) -> Result<Self, String> {
        if grid_h * grid_w * dim != values.len() || dim == 0 || values.is_empty() {
            return Err(format!("{} feature values do not fill a {grid_h} x {grid_w} grid of {dim}-dim tokens", values.len()));
        }
        Ok(Self { grid_h, grid_w, dim, values })
    }

    pub fn patches(&self) -> usize {
        self.grid_h * self.grid_w
    }

    fn row(&self, i: usize) -> &[f32] {
        &self.values[i * self.dim..(i + 1) * self.dim]
    }
}

/// How many principal components the PCA view keeps (one per colour channel).
pub const PCA_COMPONENTS: usize = 3;

/// A PCA fitted on the patch tokens of one or several pictures.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchPca {
    /// [dim]: the mean token of the fit.
    pub mean: Vec<f64>,
    /// [3][dim]: unit principal directions, largest variance first, signed as the module says.
    pub components: Vec<Vec<f64>>,
    /// Variance along each component (squared singular value / (n - 1)).
    pub variance: Vec<f64>,
    /// Per component, the smallest and largest projection over the fitted pictures (the range
    /// the RGB view scales to).
    pub range: Vec<(f64, f64)>,
}

impl PatchPca {
    /// Fit on every patch of `pictures` together (same `dim`).
    ///
    /// # Errors
    /// No pictures, pictures of different widths, or fewer than 2 patches in all.
    pub fn fit(pictures: &[&PatchFeatures]) -> Result<Self, String> {
        let dim = pictures.first().ok_or("no pictures to fit")?.dim;
        if pictures.iter().any(|p| p.dim != dim) {
            return Err("pictures with features of different widths (different models?)".into());
        }
        let rows: Vec<&[f32]> = pictures.iter().flat_map(|p| (0..p.patches()).map(move |i| p.row(i))).collect();
        let n = rows.len();
        if n < 2 {
            return Err("a PCA needs at least 2 patches".into());
        }
        let mut mean = vec![0f64; dim];
        for r in &rows {
            for (m, &x) in mean.iter_mut().zip(r.iter()) {
                *m += x as f64;
            }
        }
        mean.iter_mut().for_each(|m| *m /= n as f64);
        let centred: Vec<Vec<f64>> = rows.iter().map(|r| r.iter().zip(&mean).map(|(&x, m)| x as f64 - m).collect()).collect();
        let k = PCA_COMPONENTS.min(dim).min(n);
        // The top eigenvectors of the smaller of Xc^T Xc [dim, dim] and Xc Xc^T [n, n].
        let (mut components, eigenvalues) = if n >= dim {
            let mut cov = vec![0f64; dim * dim];
            for r in &centred {
                for i in 0..dim {
                    let ri = r[i];
                    if ri == 0.0 {
                        continue;
                    }
                    let row = &mut cov[i * dim..(i + 1) * dim];
                    for (c, &rj) in row.iter_mut().zip(r.iter()) {
                        *c += ri * rj;
                    }
                }
            }
            top_eigenvectors(&cov, dim, k)
        } else {
            let mut gram = vec![0f64; n * n];
            for i in 0..n {
                for j in i..n {
                    let d: f64 = centred[i].iter().zip(&centred[j]).map(|(a, b)| a * b).sum();
                    gram[i * n + j] = d;
                    gram[j * n + i] = d;
                }
            }
            let (us, values) = top_eigenvectors(&gram, n, k);
            // v = Xc^T u / |Xc^T u|
            let vs = us
                .iter()
                .map(|u| {
                    let mut v = vec![0f64; dim];
                    for (r, &ui) in centred.iter().zip(u) {
                        for (vj, &x) in v.iter_mut().zip(r) {
                            *vj += ui * x;
                        }
                    }
                    normalise(&mut v);
                    v
                })
                .collect();
            (vs, values)
        };
        for c in &mut components {
            let largest = c.iter().cloned().fold(0f64, |a, x| if x.abs() > a.abs() { x } else { a });
            if largest < 0.0 {
                c.iter_mut().for_each(|x| *x = -*x);
            }
        }
        let mut pca = Self {
            mean,
            components,
            variance: eigenvalues.iter().map(|l| l.max(0.0) / (n - 1) as f64).collect(),
            range: vec![(f64::INFINITY, f64::NEG_INFINITY); k],
        };
        for p in pictures {
            for proj in pca.project(p) {
                for (r, &x) in pca.range.iter_mut().zip(&proj) {
                    *r = (r.0.min(x), r.1.max(x));
                }
            }
        }
        Ok(pca)
    }

    /// Projections of every patch of `picture` on the components: [patches][3].
    pub fn project(&self, picture: &PatchFeatures) -> Vec<Vec<f64>> {
        (0..picture.patches())
            .map(|i| {
                let r = picture.row(i);
                self.components
                    .iter()
                    .map(|c| r.iter().zip(&self.mean).zip(c).map(|((&x, m), c)| (x as f64 - m) * c).sum())
                    .collect()
            })
            .collect()
    }

    /// The RGB view of `picture`: [patches][3] in [0, 1], each component scaled by the fit's
    /// range (values of a picture outside the fit are clamped). A model with fewer than three
    /// components (width < 3) leaves the missing channels at 0.
    pub fn rgb(&self, picture: &PatchFeatures) -> Vec<[f32; 3]> {
        self.project(picture)
            .iter()
            .map(|p| {
                let mut out = [0f32; 3];
                for ((o, &x), &(lo, hi)) in out.iter_mut().zip(p).zip(&self.range) {
                    let span = if hi > lo { hi - lo } else { 1.0 };
                    *o = ((x - lo) / span).clamp(0.0, 1.0) as f32;
                }
                out
            })
            .collect()
    }

    /// The PCA view of `picture` as a picture, each patch `patch` pixels: its RGB
    /// ([`rgb`](Self::rgb)); with `foreground_threshold`, the patches at or below it on the
    /// first component ([`foreground`](Self::foreground)) are black. `dino pca` and the page draw this.
    pub fn picture(&self, picture: &PatchFeatures, patch: usize, foreground_threshold: Option<f32>) -> RgbImage {
        let rgb = self.rgb(picture);
        let foreground = foreground_threshold.map(|t| rgb.iter().map(|c| c[0] > t).collect::<Vec<bool>>());
        pca_picture(&rgb, picture.grid_h, picture.grid_w, patch, foreground.as_deref())
    }

    /// Foreground by the first component (the DINOv2 demo's background removal): patches whose
    /// first-component value, scaled to [0, 1] as in [`rgb`](Self::rgb), is above `threshold`.
    pub fn foreground(&self, picture: &PatchFeatures, threshold: f32) -> Vec<bool> {
        self.rgb(picture).iter().map(|c| c[0] > threshold).collect()
    }
}

fn normalise(v: &mut [f64]) {
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

/// The `k` largest eigenpairs of the symmetric `m x m` matrix `a` (row-major), largest first:
/// block subspace iteration with Rayleigh-Ritz steps (a few extra vectors for convergence,
/// cyclic Jacobi on the small projected matrix), until every wanted Ritz pair's residual
/// |A v - l v| is below 1e-12 of the largest eigenvalue or 3000 iterations have run.
fn top_eigenvectors(a: &[f64], m: usize, k: usize) -> (Vec<Vec<f64>>, Vec<f64>) {
    let block = (k + 5).min(m);
    // A fixed, well-spread start (no RNG: the same fit every run, on every platform).
    let mut v: Vec<Vec<f64>> = (0..block)
        .map(|j| (0..m).map(|i| (((i * 7919 + j * 104_729 + 13) % 1009) as f64 / 1009.0) - 0.5 + if i == j { 1.0 } else { 0.0 }).collect())
        .collect();
    orthonormalise(&mut v);
    let matvec = |x: &[f64]| -> Vec<f64> { (0..m).map(|i| a[i * m..(i + 1) * m].iter().zip(x).map(|(p, q)| p * q).sum()).collect() };
    let mut values = vec![0f64; block];
    for iteration in 0..3000 {
        let mut w: Vec<Vec<f64>> = v.iter().map(|x| matvec(x)).collect();
        orthonormalise(&mut w);
        v = w;
        if iteration % 10 != 9 {
            continue;
        }
        // Rayleigh-Ritz: rotate the block to the eigenvectors of V^T A V.
        let av: Vec<Vec<f64>> = v.iter().map(|x| matvec(x)).collect();
        let mut h = vec![0f64; block * block];
        for i in 0..block {
            for j in 0..block {
                h[i * block + j] = v[i].iter().zip(&av[j]).map(|(p, q)| p * q).sum();
            }
        }
        let (evals, evecs) = jacobi_eigen(&h, block);
        let mut order: Vec<usize> = (0..block).collect();
        order.sort_by(|&x, &y| evals[y].total_cmp(&evals[x]));
        let rotate = |basis: &[Vec<f64>], col: usize| -> Vec<f64> {
            (0..m).map(|r| (0..block).map(|i| basis[i][r] * evecs[i * block + col]).sum()).collect()
        };
        let new_v: Vec<Vec<f64>> = order.iter().map(|&c| rotate(&v, c)).collect();
        let new_av: Vec<Vec<f64>> = order.iter().map(|&c| rotate(&av, c)).collect();
        values = order.iter().map(|&c| evals[c]).collect();
        v = new_v;
        let scale = values[0].abs().max(f64::MIN_POSITIVE);
        let converged = (0..k).all(|j| {
            let r: f64 = new_av[j].iter().zip(&v[j]).map(|(p, q)| (p - values[j] * q).powi(2)).sum::<f64>().sqrt();
            r <= 1e-12 * scale
        });
        if converged {
            break;
        }
    }
    v.truncate(k);
    values.truncate(k);
    (v, values)
}

/// Modified Gram-Schmidt, in place; a vector that vanishes is replaced by a unit vector
/// orthogonal to the ones before it.
fn orthonormalise(vs: &mut [Vec<f64>]) {
    let m = vs.first().map_or(0, |v| v.len());
    for j in 0..vs.len() {
        for attempt in 0..=m {
            for i in 0..j {
                let d: f64 = vs[i].iter().zip(&vs[j]).map(|(a, b)| a * b).sum();
                let (head, tail) = vs.split_at_mut(j);
                tail[0].iter_mut().zip(&head[i]).for_each(|(x, y)| *x -= d * y);
            }
            let norm = vs[j].iter().map(|x| x * x).sum::<f64>().sqrt();
            if norm > 1e-30 {
                vs[j].iter_mut().for_each(|x| *x /= norm);
                break;
            }
            // Degenerate: try the next coordinate axis.
            vs[j] = (0..m).map(|r| if r == attempt % m { 1.0 } else { 0.0 }).collect();
        }
    }
}

/// Eigen-decomposition of a small symmetric `n x n` matrix by cyclic Jacobi rotations:
/// (eigenvalues, eigenvectors as the columns of a row-major `n x n` matrix).
fn jacobi_eigen(a: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut a = a.to_vec();
    let mut v: Vec<f64> = (0..n * n).map(|i| if i / n == i % n { 1.0 } else { 0.0 }).collect();
    for _sweep in 0..100 {
        let off: f64 = (0..n).flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j))).map(|(i, j)| a[i * n + j].powi(2)).sum();
        let diag: f64 = (0..n).map(|i| a[i * n + i].powi(2)).sum();
        if off <= 1e-30 * diag.max(f64::MIN_POSITIVE) {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq == 0.0 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for r in 0..n {
                    let (arp, arq) = (a[r * n + p], a[r * n + q]);
                    a[r * n + p] = c * arp - s * arq;
                    a[r * n + q] = s * arp + c * arq;
                }
                for r in 0..n {
                    let (apr, aqr) = (a[p * n + r], a[q * n + r]);
                    a[p * n + r] = c * apr - s * aqr;
                    a[q * n + r] = s * apr + c * aqr;
                }
                for r in 0..n {
                    let (vrp, vrq) = (v[r * n + p], v[r * n + q]);
                    v[r * n + p] = c * vrp - s * vrq;
                    v[r * n + q] = s * vrp + c * vrq;
                }
            }
        }
    }
    ((0..n).map(|i| a[i * n + i]).collect(), v)
}

/// Cosine similarity of patch `(row, col)` of `query` with every patch of `target`:
/// [target patches] row-major on the target's grid, in [-1, 1].
///
/// # Errors
/// A position outside the query's grid, or features of different widths.
pub fn patch_similarity(query: &PatchFeatures, row: usize, col: usize, target: &PatchFeatures) -> Result<Vec<f32>, String> {
    if row >= query.grid_h || col >= query.grid_w {
        return Err(format!(
            "patch ({row}, {col}) is outside the {} x {} patch grid (rows 0 to {}, columns 0 to {})",
            query.grid_h,
            query.grid_w,
            query.grid_h - 1,
            query.grid_w - 1
        ));
    }
    if query.dim != target.dim {
        return Err("features of different widths (different models?)".into());
    }
    let unit = |r: &[f32]| -> Vec<f64> {
        let mut v: Vec<f64> = r.iter().map(|&x| x as f64).collect();
        normalise(&mut v);
        v
    };
    let q = unit(query.row(row * query.grid_w + col));
    Ok((0..target.patches()).map(|i| unit(target.row(i)).iter().zip(&q).map(|(a, b)| a * b).sum::<f64>() as f32).collect())
}

/// The patch under pixel `(x, y)` of a picture cut into `patch`-pixel patches: (row, col).
pub fn patch_at(x: usize, y: usize, patch: usize) -> (usize, usize) {
    (y / patch.max(1), x / patch.max(1))
}

/// The PCA view as a picture: each patch a `patch x patch` block of its RGB (values in [0, 1]);
/// patches outside `foreground` (when given) are black.
pub fn pca_picture(rgb: &[[f32; 3]], grid_h: usize, grid_w: usize, patch: usize, foreground: Option<&[bool]>) -> RgbImage {
    let (w, h) = ((grid_w * patch) as u32, (grid_h * patch) as u32);
    RgbImage::from_fn(w, h, |x, y| {
        let i = (y as usize / patch) * grid_w + x as usize / patch;
        if foreground.is_some_and(|f| !f[i]) {
            return Rgb([0, 0, 0]);
        }
        Rgb(rgb[i].map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8))
    })
}

/// The similarity view: `similarity` ([`patch_similarity`]'s output on the grid of `image`)
/// coloured and blended over `image` with `opacity`, and the query patch outlined when it lies
/// in this picture (`query`: (row, col)). `dino similarity` and the page draw this.
pub fn similarity_picture(
    image: &RgbImage,
    similarity: &[f32],
    grid_h: usize,
    grid_w: usize,
    patch: usize,
    query: Option<(usize, usize)>,
    opacity: f32,
) -> RgbImage {
    let map = overlay(image, &heatmap(similarity, grid_h, grid_w, patch), opacity);
    match query {
        Some((row, col)) => mark_patch(&map, row, col, patch),
        None => map,
    }
}

/// `picture` with a `patch x patch` square outline at patch (row, col) (the query of the
/// similarity view), drawn in white over a black border so it shows on any picture.
pub fn mark_patch(picture: &RgbImage, row: usize, col: usize, patch: usize) -> RgbImage {
    let mut out = picture.clone();
    let (x0, y0) = ((col * patch) as i64, (row * patch) as i64);
    let p = patch as i64;
    for (inset, colour) in [(0, Rgb([0, 0, 0])), (1, Rgb([255, 255, 255]))] {
        let (a, b) = (inset, p - 1 - inset);
        for t in a..=b {
            for (x, y) in [(x0 + t, y0 + a), (x0 + t, y0 + b), (x0 + a, y0 + t), (x0 + b, y0 + t)] {
                if x >= 0 && y >= 0 && (x as u32) < out.width() && (y as u32) < out.height() {
                    out.put_pixel(x as u32, y as u32, colour);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Points on a line in 3-D plus small noise: the first component is the line's direction.
    #[test]
    fn pca_finds_the_direction_of_largest_variance() {
        let dir = [0.6, -0.8, 0.0];
        let values: Vec<f32> = (0..20)
            .flat_map(|i| {
                let t = i as f64 - 9.5;
                let noise = [0.01 * (i % 3) as f64, 0.0, 0.02 * (i % 5) as f64];
                (0..3).map(move |c| (t * dir[c] + noise[c] + 1.0) as f32)
            })
            .collect();
        let f = PatchFeatures::new(4, 5, 3, values).unwrap();
        let pca = PatchPca::fit(&[&f]).unwrap();
        // Signed so the largest entry (|-0.8|) is positive.
        let c = &pca.components[0];
        assert!((c[0] + 0.6).abs() < 1e-3 && (c[1] - 0.8).abs() < 1e-3, "{c:?}");
        let rgb = pca.rgb(&f);
        assert!(rgb.iter().all(|p| p.iter().all(|v| (0.0..=1.0).contains(v))));
        // Orthonormal components.
        for i in 0..3 {
            for j in 0..3 {
                let d: f64 = pca.components[i].iter().zip(&pca.components[j]).map(|(a, b)| a * b).sum();
                assert!((d - if i == j { 1.0 } else { 0.0 }).abs() < 1e-9, "{i} {j} {d}");
            }
        }
    }

    #[test]
    fn similarity_of_a_patch_with_itself_is_one() {
        let f = PatchFeatures::new(1, 3, 2, vec![1.0, 0.0, 0.0, 2.0, -3.0, 0.0]).unwrap();
        let s = patch_similarity(&f, 0, 0, &f).unwrap();
        assert_eq!(s, vec![1.0, 0.0, -1.0]);
        assert!(patch_similarity(&f, 1, 0, &f).unwrap_err().contains("outside the 1 x 3 patch grid"));
        assert!(PatchFeatures::new(2, 2, 2, vec![0.0; 7]).is_err());
    }
}
