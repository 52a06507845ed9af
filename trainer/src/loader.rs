//! Multi-crop batches made on worker threads ahead of the model, through bounded queues.
//!
//! Reproducible whatever the thread timing: the epoch's order is a permutation seeded by
//! (seed, epoch), each picture's augmentation has its own generator seeded by
//! (seed, epoch, index), and batch k always comes from worker k mod W, read in order; a resume
//! inside an epoch batches the rest of the same order from its next picture on.

use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::augment::{multi_crop, CropSpec, MultiCrop};
use crate::data::Dataset;

/// Crops of one batch, crop-major as the official MultiCropWrapper concatenates them:
/// `globals` is [2, B, 3, G, G], `locals` is [N, B, 3, L, L].
pub struct Batch {
    pub images: usize,
    pub globals: Vec<f32>,
    pub locals: Vec<f32>,
    /// Files of this batch that could not be decoded (skipped), with the reason.
    pub skipped: Vec<String>,
}

/// SplitMix64 finaliser: independent seeds from (seed, epoch, index).
pub fn mix(a: u64, b: u64, c: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ c.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The sample order of an epoch (shuffled; the last incomplete batch dropped, as official),
/// in batches from its `first_picture` on (0: the whole epoch; a resume inside it: the rest).
pub fn epoch_order(len: usize, batch_size: usize, seed: u64, epoch: usize, first_picture: usize) -> Vec<Vec<usize>> {
    let mut idx: Vec<usize> = (0..len).collect();
    idx.shuffle(&mut StdRng::seed_from_u64(mix(seed, epoch as u64, u64::MAX)));
    idx[first_picture.min(len)..].chunks_exact(batch_size).map(|c| c.to_vec()).collect()
}

pub fn make_batch(data: &Dataset, crops: &[CropSpec], indices: &[usize], seed: u64, epoch: usize) -> Batch {
    let mut per_image: Vec<Vec<Vec<f32>>> = Vec::with_capacity(indices.len());
    let mut skipped = Vec::new();
    for &i in indices {
        match data.load(i) {
            Ok(img) => {
                let mut rng = StdRng::seed_from_u64(mix(seed, epoch as u64, i as u64));
                per_image.push(multi_crop(&img, crops, &mut rng));
            }
            Err(e) => skipped.push(format!("{e:#}")),
        }
    }
    let mut globals = Vec::new();
    let mut locals = Vec::new();
    for c in 0..crops.len() {
        let out = if c < 2 { &mut globals } else { &mut locals };
        for img in &per_image {
            out.extend_from_slice(&img[c]);
        }
    }
    Batch { images: per_image.len(), globals, locals, skipped }
}

/// An epoch's batches, produced by `workers` threads at most `prefetch` batches ahead each.
pub struct Loader {
    receivers: Vec<Receiver<Batch>>,
    next: usize,
    total: usize,
    handles: Vec<JoinHandle<()>>,
}

impl Loader {
    pub fn start(
        data: Arc<Dataset>,
        multicrop: &MultiCrop,
        batch_size: usize,
        seed: u64,
        epoch: usize,
        first_picture: usize,
        workers: usize,
        prefetch: usize,
    ) -> Self {
        let order = Arc::new(epoch_order(data.len(), batch_size, seed, epoch, first_picture));
        let crops = Arc::new(multicrop.crops());
        let workers = workers.max(1);
        let mut receivers = Vec::new();
        let mut handles = Vec::new();
        for w in 0..workers {
            let (tx, rx) = bounded(prefetch.max(1));
            receivers.push(rx);
            let (data, order, crops) = (data.clone(), order.clone(), crops.clone());
            handles.push(std::thread::spawn(move || {
                for k in (w..order.len()).step_by(workers) {
                    let batch = make_batch(&data, &crops, &order[k], seed, epoch);
                    if tx.send(batch).is_err() {
                        return; // the consumer stopped early
                    }
                }
            }));
        }
        Self { receivers, next: 0, total: order.len(), handles }
    }

    pub fn len(&self) -> usize {
        self.total
    }
}

impl Iterator for Loader {
    type Item = Batch;
    fn next(&mut self) -> Option<Batch> {
        if self.next >= self.total {
            return None;
        }
        let rx = &self.receivers[self.next % self.receivers.len()];
        self.next += 1;
        rx.recv().ok()
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.receivers.clear(); // unblocks workers waiting to send
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}
