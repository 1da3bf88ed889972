//! The DMA file primitives every segment writer shares: one way to open a data file with
//! O_DIRECT through io_uring, and one block-aligned write.
//!
//! Used by Kafka segments (`storage::segment`, the flusher in `storage/mod.rs`, the
//! compactor) and by the record journal of AMQP queue segments (`storage::journal`), on
//! the shard that owns the file. Writes are whole blocks: the caller keeps the last
//! partial block in memory and passes it again, before its new bytes, with the next write
//! (so `position` is block-aligned and the file may end in zero padding past the logical
//! end, which the readers treat as the end).

use std::path::Path;
use std::rc::Rc;

use glommio::io::{DmaFile, OpenOptions};

/// Opens `path` for reading and writing with O_DIRECT, creating it (and its directory)
/// when missing.
pub async fn open(path: &Path) -> std::io::Result<Rc<DmaFile>> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .dma_open(path)
        .await
        .map_err(std::io::Error::from)?;
    Ok(Rc::new(f))
}

/// Opens a second handle on an existing file for writes that are durable when they
/// complete (O_DIRECT | O_DSYNC): the data and whatever metadata is needed to read it back
/// (a grown size) reach the disk before the write is answered, as if an fdatasync had
/// followed it, in one request instead of two.
pub async fn open_dsync(path: &Path) -> std::io::Result<Rc<DmaFile>> {
    let f = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DSYNC)
        .dma_open(path)
        .await
        .map_err(std::io::Error::from)?;
    Ok(Rc::new(f))
}

/// Opens an existing file for reading and writing with O_DIRECT (never creates it).
pub async fn open_existing(path: &Path) -> std::io::Result<Rc<DmaFile>> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .dma_open(path)
        .await
        .map_err(std::io::Error::from)?;
    Ok(Rc::new(f))
}

/// Writes `parts`, one after the other, at the block-aligned `position`, zero-padded to
/// whole blocks. Each part is copied once, straight into the DMA buffer (callers pass the
/// last partial block and the batches as they are, never joined first). A short write is
/// an error: O_DIRECT on a filling disk writes the blocks it could allocate and stops, so
/// the rest is as missing as if the write had failed (ENOSPC; EIO when nothing was
/// written).
pub async fn write_aligned(file: &DmaFile, position: u64, parts: &[&[u8]]) -> std::io::Result<()> {
    let align = file.alignment() as usize;
    let logical: usize = parts.iter().map(|p| p.len()).sum();
    let len = logical.div_ceil(align) * align;
    let mut buf = file.alloc_dma_buffer(len);
    let out = buf.as_bytes_mut();
    let mut at = 0;
    for part in parts {
        out[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    out[logical..].fill(0);
    match file.write_at(buf, position).await {
        Ok(n) if n >= len => Ok(()),
        Ok(n) => Err(std::io::Error::from_raw_os_error(if n == 0 {
            libc::EIO
        } else {
            libc::ENOSPC
        })),
        Err(e) => Err(std::io::Error::from(e)),
    }
}

/// The bytes of the last partial block of a file whose logical length is `len`, taken
/// from `parts`, the bytes just written (in order) ending at `len`.
pub fn partial_block(parts: &[&[u8]], len: u64, align: u64) -> Vec<u8> {
    let mut keep = (len % align) as usize;
    let mut tail: Vec<&[u8]> = Vec::new();
    for part in parts.iter().rev() {
        if keep == 0 {
            break;
        }
        let take = keep.min(part.len());
        tail.push(&part[part.len() - take..]);
        keep -= take;
    }
    tail.iter().rev().flat_map(|p| p.iter().copied()).collect()
}

/// Reads the last partial block of a file whose logical length is `len` back from the
/// file (after recovery, or after a failed write cut it back).
pub async fn read_partial_block(file: &DmaFile, len: u64) -> std::io::Result<Vec<u8>> {
    let start = len - len % file.alignment();
    if len == start {
        return Ok(Vec::new());
    }
    let r = file
        .read_at(start, (len - start) as usize)
        .await
        .map_err(std::io::Error::from)?;
    Ok(r.to_vec())
}

#[cfg(test)]
mod tests {
    use super::partial_block;

    #[test]
    fn the_partial_block_is_taken_across_parts() {
        // 512-byte blocks: a write from block 0 of a 300-byte partial block and two
        // batches (400 and 100 bytes) ends at 800, so 288 bytes are past the last block.
        let partial = vec![1u8; 300];
        let a = vec![2u8; 400];
        let b = vec![3u8; 100];
        let parts = [&partial[..], &a[..], &b[..]];
        let tail = partial_block(&parts, 800, 512);
        let mut joined = partial.clone();
        joined.extend_from_slice(&a);
        joined.extend_from_slice(&b);
        assert_eq!(tail, joined[512..]);
        // Ends on a block boundary: nothing is partial.
        assert!(partial_block(&[&a[..], &b[..], &[0u8; 12][..]], 1024, 512).is_empty());
        // The tail inside the last part alone.
        assert_eq!(partial_block(&parts, 600, 512), vec![3u8; 88]);
    }
}
