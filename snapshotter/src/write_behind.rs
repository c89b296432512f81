//! Writing a large blob (a layer as it is compressed, an archive) to a file from a
//! thread of its own, with direct I/O where the filesystem has it.
//!
//! Why direct I/O, for a blob kiln does not read again (an archive, the build's output:
//! [`Via::Direct`]): a buffered write puts every byte of it in the page cache first. Each new page-cache page is
//! memory the kernel hands out and the writer fills, which on a virtual machine whose
//! free memory goes back to its host (virtio-balloon free page reporting, as CI
//! runners and this project's bench machine have) is a host fault per page: 500 MB
//! written with `dd` took 1.43 s of system time buffered (plus 0.25 s of `sync`) and
//! 0.19 s with `oflag=direct`, and a 1 GiB zstd layer build went from 3.2 s to 5.3-5.7
//! s once the page cache had grown into such memory. Direct writes skip the page cache
//! (and the copy into it); the fsync at the end then has only the metadata to write.
//! A store blob is written through the page cache ([`Via::PageCache`]): a push that
//! follows reads it from there, where from the disk it would fill the cache anyway
//! (the 1 GiB push bench used 0.71 s of CPU instead of 0.40 when it did).
//!
//! Why a thread: a direct write returns when the disk has the data, so the writer
//! thread (which compresses, hashes and walks the tree) would wait for the disk; here
//! it fills the next chunk while the last one is written. Where direct I/O is refused
//! (tmpfs before 6.6, some FUSE and network filesystems), the thread writes through the
//! page cache and starts writeback of each [`WRITE_BEHIND`] bytes at once, so that the
//! disk still works while the producer computes.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

/// The size of one chunk handed to the writing thread.
const CHUNK: usize = 1 << 20;

/// Chunks queued for the thread: enough to ride out a slow write, small in memory.
const QUEUE: usize = 3;

/// Offsets, lengths and buffers of direct writes are multiples of this (the page size:
/// at least any device's logical block size and any filesystem's direct I/O alignment).
const ALIGN: usize = 4096;

/// How much is written between two writeback requests when writing through the cache.
pub const WRITE_BEHIND: u64 = 8 << 20;

/// How a blob is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// Through the page cache: a blob that kiln reads again soon (a store blob, which a
    /// push or an export that follows the build reads; from the page cache, not the
    /// disk, and without filling the cache then).
    PageCache,
    /// With direct I/O where the filesystem has it: a blob that kiln does not read
    /// again (an archive, the build's output).
    Direct,
}

/// A chunk of memory whose data starts at an [`ALIGN`]ed address.
struct Chunk {
    mem: Box<[u8]>,
    start: usize,
    len: usize,
}

impl Chunk {
    fn new() -> Chunk {
        let mem = vec![0u8; CHUNK + ALIGN].into_boxed_slice();
        let start = mem.as_ptr().align_offset(ALIGN).min(ALIGN);
        Chunk { mem, start, len: 0 }
    }

    fn data(&self) -> &[u8] {
        &self.mem[self.start..self.start + self.len]
    }

    fn room(&mut self) -> &mut [u8] {
        &mut self.mem[self.start + self.len..self.start + CHUNK]
    }
}

/// A file writer for large blobs: see the module's documentation. What it was given is
/// in the file once [`WriteBehind::finish`] returns (not yet synced).
pub struct WriteBehind {
    chunk: Chunk,
    /// The file offset of `chunk`'s first byte.
    pos: u64,
    /// How much the current chunk holds at most: the first one ends at an aligned
    /// offset, so that every later one starts at one.
    cap: usize,
    to_thread: Option<SyncSender<(u64, Chunk)>>,
    spare: Receiver<Chunk>,
    thread: Option<JoinHandle<io::Result<File>>>,
}

impl WriteBehind {
    /// For a file positioned at its start.
    pub fn new(file: File, via: Via) -> Self {
        Self::at(file, 0, via)
    }

    /// Writes from `offset` on (the file's position is neither used nor moved), `via`
    /// direct I/O or the page cache.
    pub fn at(file: File, offset: u64, via: Via) -> Self {
        Self::with_direct(file, offset, via == Via::Direct)
    }

    fn with_direct(file: File, offset: u64, direct: bool) -> Self {
        let (to_thread, from_producer) = sync_channel::<(u64, Chunk)>(QUEUE);
        let (to_producer, spare) = sync_channel::<Chunk>(QUEUE + 2);
        let thread = std::thread::Builder::new()
            .name("write-behind".into())
            .spawn(move || write_chunks(file, direct, from_producer, to_producer));
        let (to_thread, thread) = match thread {
            Ok(t) => (Some(to_thread), Some(t)),
            // No thread to be had: every write then fails with this.
            Err(_) => (None, None),
        };
        let misalign = (offset % ALIGN as u64) as usize;
        WriteBehind {
            chunk: Chunk::new(),
            pos: offset,
            cap: CHUNK - misalign,
            to_thread,
            spare,
            thread,
        }
    }

    /// Hands the current chunk to the thread and starts another.
    fn send(&mut self) -> io::Result<()> {
        let mut next = self.spare.try_recv().unwrap_or_else(|_| Chunk::new());
        next.len = 0;
        let full = std::mem::replace(&mut self.chunk, next);
        let len = full.len as u64;
        let sent = match &self.to_thread {
            Some(tx) => tx.send((self.pos, full)).is_ok(),
            None => false,
        };
        if !sent {
            // The thread stopped at an error: that is this write's error.
            return Err(self
                .stop()
                .err()
                .unwrap_or_else(|| io::Error::other("the thread writing the file stopped")));
        }
        self.pos += len;
        self.cap = CHUNK;
        Ok(())
    }

    /// Ends the thread and returns its file or error.
    fn stop(&mut self) -> io::Result<File> {
        self.to_thread = None;
        match self.thread.take() {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the thread writing the file failed"))),
            None => Err(io::Error::other(
                "no thread could be started to write the file",
            )),
        }
    }

    /// Writes what is left and returns the file, everything handed to the kernel (not
    /// synced).
    pub fn finish(mut self) -> io::Result<File> {
        if self.chunk.len > 0 {
            self.send()?;
        }
        self.stop()
    }
}

impl Write for WriteBehind {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.chunk.len == self.cap {
            self.send()?;
        }
        let want = self.cap - self.chunk.len;
        let room = &mut self.chunk.room()[..want];
        let n = room.len().min(buf.len());
        room[..n].copy_from_slice(&buf[..n]);
        self.chunk.len += n;
        Ok(n)
    }

    /// Nothing to do: the data reaches the file in chunks, and all of it by `finish`.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for WriteBehind {
    fn drop(&mut self) {
        // Not finished (an error on the way): the thread stops after what it was given.
        let _ = self.stop();
    }
}

/// The thread: writes each chunk at its offset, directly while it can, and gives the
/// chunk back.
fn write_chunks(
    file: File,
    direct: bool,
    chunks: Receiver<(u64, Chunk)>,
    spare: SyncSender<Chunk>,
) -> io::Result<File> {
    let mut direct = direct && crate::sys::set_direct_io(&file, true).is_ok();
    let mut flag = DirectFlag { on: direct };
    let mut hinted = None::<u64>;
    for (pos, chunk) in chunks {
        let data = chunk.data();
        // The aligned part directly; an unaligned start (the first chunk of a blob
        // written after headers) or end (the last chunk) through the page cache.
        let mut done = 0;
        let aligned = data.len() / ALIGN * ALIGN;
        if direct && pos % ALIGN as u64 == 0 && aligned > 0 {
            flag.set(&file, true)?;
            match file.write_all_at(&data[..aligned], pos) {
                Ok(()) => done = aligned,
                // Refused after all (an alignment this filesystem wants larger): the
                // rest of the blob goes through the page cache, from this chunk on.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => direct = false,
                Err(e) => return Err(e),
            }
        }
        if done < data.len() {
            flag.set(&file, false)?;
            let at = pos + done as u64;
            file.write_all_at(&data[done..], at)?;
            if !direct {
                hint(&file, &mut hinted, at, data.len() - done);
            }
        }
        let _ = spare.try_send(chunk);
    }
    // The caller may go on writing the file as usual (an archive's headers).
    flag.set(&file, false)?;
    Ok(file)
}

/// Whether `O_DIRECT` is on for the thread's file: changed only when it must be.
struct DirectFlag {
    on: bool,
}

impl DirectFlag {
    fn set(&mut self, file: &File, on: bool) -> io::Result<()> {
        if self.on != on {
            crate::sys::set_direct_io(file, on)?;
            self.on = on;
        }
        Ok(())
    }
}

/// Starts writeback of what was written through the cache since the last start, each
/// [`WRITE_BEHIND`] bytes.
fn hint(file: &File, since: &mut Option<u64>, pos: u64, len: usize) {
    let from = *since.get_or_insert(pos);
    let end = pos + len as u64;
    if end - from >= WRITE_BEHIND {
        crate::sys::start_writeback(file, from, end - from);
        *since = Some(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    fn write_in_pieces(w: &mut WriteBehind, data: &[u8]) {
        // Odd-sized writes, crossing several chunks and ending mid-chunk.
        for piece in data.chunks(1 << 19 | 3) {
            w.write_all(piece).expect("write");
        }
    }

    #[test]
    fn writes_everything_directly_and_through_the_cache() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = pattern(2 * WRITE_BEHIND as usize + 12345);
        for direct in [true, false] {
            let path = dir.path().join(format!("blob-{direct}"));
            let f = File::create(&path).expect("create");
            let mut w = WriteBehind::with_direct(f, 0, direct);
            write_in_pieces(&mut w, &data);
            w.finish().expect("finish").sync_all().expect("sync");
            assert_eq!(std::fs::read(&path).expect("read"), data, "direct {direct}");
        }
    }

    #[test]
    fn starts_at_an_unaligned_offset_and_leaves_what_is_before_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("archive");
        let head = b"headers written before, kept";
        std::fs::write(&path, head).expect("head");
        let data = pattern(3 * CHUNK + 77);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open");
        let mut w = WriteBehind::at(f, head.len() as u64 + 1000, Via::Direct);
        write_in_pieces(&mut w, &data);
        let f = w.finish().expect("finish");
        // Direct I/O is off again for what the caller writes next: an unaligned write.
        let end = head.len() as u64 + 1000 + data.len() as u64;
        f.write_all_at(b"more", end).expect("write after");
        drop(f);
        let mut got = Vec::new();
        File::open(&path)
            .expect("open")
            .read_to_end(&mut got)
            .expect("read");
        assert_eq!(&got[..head.len()], head);
        assert!(got[head.len()..head.len() + 1000].iter().all(|&b| b == 0));
        assert_eq!(&got[head.len() + 1000..got.len() - 4], &data[..]);
        assert_eq!(&got[got.len() - 4..], b"more");
    }

    #[test]
    fn a_failed_write_is_the_error_of_a_later_write_or_of_finish() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ro");
        std::fs::write(&path, b"").expect("create");
        // Opened for reading only: every write the thread makes fails.
        let mut w = WriteBehind::new(File::open(&path).expect("open"), Via::Direct);
        let data = pattern(4 * CHUNK);
        let mut failed = false;
        for piece in data.chunks(CHUNK) {
            if w.write_all(piece).is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed || w.finish().is_err());
    }
}
