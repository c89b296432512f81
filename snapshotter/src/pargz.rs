//! Parallel gzip, as pigz makes it: the input is cut into 128 KiB blocks, each block
//! is deflated on a worker with the previous block's last 32 KiB as its dictionary
//! and ends in a sync flush, and the blocks are written in order as one deflate
//! stream inside one gzip member. Any gzip reader reads it.
//!
//! Hand-written rather than taken from a crate: `gzp` (the maintained-enough one)
//! pulls in its own thread pool and flate2 backend choice, and kiln needs the output
//! to depend only on the data, the level and the block size (never on the number of
//! workers or their timing), so that layer digests are the same on every machine.
//! That holds here: block boundaries and dictionaries are fixed by the input alone.
//! Two workers by default: the machines kiln targets have two cores, and the caller
//! (hashing, tar) runs on a third thread.

use flate2::{Compress, Compression, FlushCompress, Status};
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

/// The block size pigz uses.
pub const BLOCK: usize = 128 * 1024;
const DICT: usize = 32 * 1024;

struct Job {
    seq: u64,
    dict: Option<Arc<[u8]>>,
    data: Vec<u8>,
    last: bool,
}

struct Done {
    seq: u64,
    out: io::Result<Vec<u8>>,
    crc: u32,
    len: u64,
}

/// A gzip writer that compresses on `workers` threads.
pub struct Writer<W: Write> {
    inner: Option<W>,
    level: u32,
    block: Vec<u8>,
    dict: Option<Arc<[u8]>>,
    next_seq: u64,
    next_write: u64,
    pending: BTreeMap<u64, Done>,
    in_flight: usize,
    max_in_flight: usize,
    jobs: Option<mpsc::Sender<Job>>,
    results: mpsc::Receiver<Done>,
    workers: Vec<JoinHandle<()>>,
    crc: crc32fast::Hasher,
    total: u64,
    header_written: bool,
}

fn deflate_block(level: u32, dict: Option<&[u8]>, data: &[u8], last: bool) -> io::Result<Vec<u8>> {
    let mut c = Compress::new(Compression::new(level), false);
    if let Some(d) = dict {
        c.set_dictionary(d).map_err(io::Error::other)?;
    }
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    let mut out = Vec::with_capacity(data.len() + data.len() / 16 + 64);
    loop {
        if out.len() == out.capacity() {
            out.reserve(64 * 1024);
        }
        let consumed = usize::try_from(c.total_in()).unwrap_or(usize::MAX);
        let status = c
            .compress_vec(&data[consumed.min(data.len())..], &mut out, flush)
            .map_err(io::Error::other)?;
        let all_in = c.total_in() == data.len() as u64;
        let done = if last {
            status == Status::StreamEnd
        } else {
            // zlib's rule: a sync flush is complete when output space is left over.
            all_in && out.len() < out.capacity()
        };
        if done {
            return Ok(out);
        }
    }
}

fn run(level: u32, job: Job) -> Done {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&job.data);
    Done {
        seq: job.seq,
        out: deflate_block(level, job.dict.as_deref(), &job.data, job.last),
        crc: crc.finalize(),
        len: job.data.len() as u64,
    }
}

impl<W: Write> Writer<W> {
    /// A writer at `level` (0-9) on `workers` threads (at least 1).
    pub fn new(inner: W, level: u32, workers: usize) -> Writer<W> {
        let workers = workers.max(1);
        let (job_tx, job_rx) = mpsc::channel::<Job>();
        let job_rx = Arc::new(std::sync::Mutex::new(job_rx));
        let (done_tx, done_rx) = mpsc::channel::<Done>();
        // A worker that cannot be started (a process that unshared its pid namespace
        // cannot make threads) leaves the work to the caller's thread.
        let handles: Vec<JoinHandle<()>> = (0..workers)
            .map_while(|_| {
                let rx = job_rx.clone();
                let tx = done_tx.clone();
                std::thread::Builder::new()
                    .name("kiln-gzip".into())
                    .spawn(move || loop {
                        let job = {
                            let guard = rx.lock().unwrap_or_else(|p| p.into_inner());
                            guard.recv()
                        };
                        let Ok(job) = job else { return };
                        if tx.send(run(level, job)).is_err() {
                            return;
                        }
                    })
                    .ok()
            })
            .collect();
        Writer {
            inner: Some(inner),
            level,
            block: Vec::with_capacity(BLOCK),
            dict: None,
            next_seq: 0,
            next_write: 0,
            pending: BTreeMap::new(),
            in_flight: 0,
            max_in_flight: workers * 2,
            jobs: Some(job_tx),
            results: done_rx,
            workers: handles,
            crc: crc32fast::Hasher::new(),
            total: 0,
            header_written: false,
        }
    }

    fn inner(&mut self) -> io::Result<&mut W> {
        self.inner
            .as_mut()
            .ok_or_else(|| io::Error::other("gzip writer already finished"))
    }

    fn write_header(&mut self) -> io::Result<()> {
        if !self.header_written {
            // No name, no mtime, "unknown" OS: the same bytes everywhere.
            let xfl = match self.level {
                9 => 2,
                1 => 4,
                _ => 0,
            };
            self.inner()?
                .write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, 0xff])?;
            self.header_written = true;
        }
        Ok(())
    }

    fn dispatch(&mut self, last: bool) -> io::Result<()> {
        let data = std::mem::replace(&mut self.block, Vec::with_capacity(BLOCK));
        let dict = self.dict.take();
        if !last {
            let start = data.len().saturating_sub(DICT);
            self.dict = Some(Arc::from(&data[start..]));
        }
        let job = Job {
            seq: self.next_seq,
            dict,
            data,
            last,
        };
        self.next_seq += 1;
        if self.workers.is_empty() {
            let done = run(self.level, job);
            self.pending.insert(done.seq, done);
            return self.write_ready();
        }
        self.jobs
            .as_ref()
            .ok_or_else(|| io::Error::other("gzip workers are gone"))?
            .send(job)
            .map_err(|_| io::Error::other("gzip workers are gone"))?;
        self.in_flight += 1;
        while self.in_flight >= self.max_in_flight {
            self.collect_one()?;
        }
        Ok(())
    }

    /// Waits for one result and writes whatever is next in order.
    fn collect_one(&mut self) -> io::Result<()> {
        let d = self
            .results
            .recv()
            .map_err(|_| io::Error::other("a gzip worker stopped"))?;
        self.in_flight -= 1;
        self.pending.insert(d.seq, d);
        self.write_ready()
    }

    fn write_ready(&mut self) -> io::Result<()> {
        self.write_header()?;
        while let Some(d) = self.pending.remove(&self.next_write) {
            let out = d.out?;
            self.crc
                .combine(&crc32fast::Hasher::new_with_initial_len(d.crc, d.len));
            self.total += d.len;
            self.inner()?.write_all(&out)?;
            self.next_write += 1;
        }
        Ok(())
    }

    /// Compresses what is left, writes the trailer and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.dispatch(true)?;
        while self.in_flight > 0 {
            self.collect_one()?;
        }
        let crc = self.crc.clone().finalize();
        let total = self.total;
        let w = self.inner()?;
        w.write_all(&crc.to_le_bytes())?;
        w.write_all(&(total as u32).to_le_bytes())?;
        w.flush()?;
        self.shutdown();
        self.inner
            .take()
            .ok_or_else(|| io::Error::other("gzip writer already finished"))
    }

    fn shutdown(&mut self) {
        self.jobs = None;
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}

impl<W: Write> Write for Writer<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut rest = buf;
        while !rest.is_empty() {
            if self.block.len() == BLOCK {
                self.dispatch(false)?;
            }
            let n = (BLOCK - self.block.len()).min(rest.len());
            self.block.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<W: Write> Drop for Writer<W> {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn data(n: usize) -> Vec<u8> {
        // Compressible but not trivial: words with a slowly changing counter.
        let mut v = Vec::with_capacity(n);
        let mut i = 0u64;
        while v.len() < n {
            v.extend_from_slice(format!("line {i} of kiln's test data {}\n", i % 97).as_bytes());
            i += 1;
        }
        v.truncate(n);
        v
    }

    fn gz(input: &[u8], level: u32, workers: usize, piece: usize) -> Vec<u8> {
        let mut w = Writer::new(Vec::new(), level, workers);
        for c in input.chunks(piece.max(1)) {
            w.write_all(c).expect("write");
        }
        w.finish().expect("finish")
    }

    #[test]
    fn any_gzip_reader_reads_it_back() {
        for n in [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 5 * BLOCK + 12345] {
            let input = data(n);
            let out = gz(&input, 6, 2, 7000);
            let mut back = Vec::new();
            flate2::read::GzDecoder::new(&out[..])
                .read_to_end(&mut back)
                .expect("decodes");
            assert_eq!(back, input, "{n} bytes");
            // One member: the multi-member decoder sees the same.
            let mut again = Vec::new();
            flate2::read::MultiGzDecoder::new(&out[..])
                .read_to_end(&mut again)
                .expect("decodes");
            assert_eq!(again, input);
        }
    }

    #[test]
    fn without_workers_the_caller_compresses_the_same_bytes() {
        let input = data(2 * BLOCK + 5);
        let mut w = Writer::new(Vec::new(), 6, 2);
        w.shutdown(); // as if no thread could be started
        w.write_all(&input).expect("write");
        assert_eq!(w.finish().expect("finish"), gz(&input, 6, 2, 4096));
    }

    #[test]
    fn output_depends_on_the_data_only() {
        let input = data(3 * BLOCK + 999);
        let one = gz(&input, 6, 1, 4096);
        assert_eq!(gz(&input, 6, 2, 1 << 20), one);
        assert_eq!(gz(&input, 6, 4, 333), one);
        assert_ne!(gz(&input, 1, 2, 4096), one, "the level matters");
        // The dictionary carries across blocks: repeated data compresses well.
        let repeated: Vec<u8> = std::iter::repeat_n(data(BLOCK / 2), 8).flatten().collect();
        let out = gz(&repeated, 6, 2, 4096);
        assert!(
            out.len() < repeated.len() / 8,
            "{} of {}",
            out.len(),
            repeated.len()
        );
    }
}
