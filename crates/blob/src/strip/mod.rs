//! Metadata stripping as streaming filters: sans-IO state machines fed the
//! upload in pieces of any size, handing on what is kept as [`Bytes`] slices
//! of their input (no copy for image data) plus a few small rewritten pieces.
//! Memory stays bounded whatever the file size: the largest thing a filter
//! buffers is one JPEG marker segment (at most 64 KiB).
//!
//! - JPEG ([`jpeg`]): keeps SOI, tables, frame and scan headers, the image
//!   data, APP0 (JFIF), APP2 ICC profiles and APP14 Adobe (colour transform);
//!   drops every other APPn (APP1 Exif/XMP with GPS, APP13 IPTC, APP2 MPF,
//!   makers' own) and COM; keeps the Exif orientation as a minimal APP1 of its
//!   own; drops everything after EOI (MPF/maker trailers with their own Exif,
//!   appended polyglot payloads).
//! - PNG ([`png`]): drops eXIf, tEXt, iTXt, zTXt and tIME chunks and anything
//!   after IEND.
//! - WebP ([`webp`]): overwrites EXIF and XMP chunks with an unknown `JUNK`
//!   chunk of the same size full of zeros, clears the VP8X Exif/XMP flags,
//!   and drops anything after the RIFF end. Same size, because the RIFF size
//!   is the header's and the header has gone out before the metadata chunks
//!   (which the format puts after the image data) are seen.
//!
//! Other accepted types pass through unchanged (HEIC/HEIF and MP4/MOV can
//! carry GPS too; see docs/design-notes.md).

pub mod jpeg;
pub mod png;
pub mod webp;

use bytes::Bytes;

use crate::sniff::Kind;

/// The upload does not parse as the type its magic number claimed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{format} is malformed at byte {offset}: {reason}")]
pub struct StripError {
    pub format: &'static str,
    pub offset: u64,
    pub reason: String,
}

/// A metadata filter for one upload.
#[derive(Debug)]
pub enum Filter {
    Jpeg(jpeg::JpegFilter),
    Png(png::PngFilter),
    Webp(webp::WebpFilter),
    Pass,
}

impl Filter {
    /// The filter for `kind`; [`Filter::Pass`] for types without one.
    pub fn for_kind(kind: Kind) -> Filter {
        match kind {
            Kind::Jpeg => Filter::Jpeg(jpeg::JpegFilter::new()),
            Kind::Png => Filter::Png(png::PngFilter::new()),
            Kind::Webp => Filter::Webp(webp::WebpFilter::new()),
            _ => Filter::Pass,
        }
    }

    /// Takes the next piece of the upload; appends what is kept to `out`.
    pub fn push(&mut self, input: Bytes, out: &mut impl Extend<Bytes>) -> Result<(), StripError> {
        match self {
            Filter::Jpeg(f) => f.push(input, out),
            Filter::Png(f) => f.push(input, out),
            Filter::Webp(f) => f.push(input, out),
            Filter::Pass => {
                out.extend(Some(input));
                Ok(())
            }
        }
    }

    /// The upload ended: errors if it ended mid-structure.
    pub fn finish(&mut self) -> Result<(), StripError> {
        match self {
            Filter::Jpeg(f) => f.finish(),
            Filter::Png(f) => f.finish(),
            Filter::Webp(f) => f.finish(),
            Filter::Pass => Ok(()),
        }
    }

    /// Whether anything was removed or blanked.
    pub fn stripped(&self) -> bool {
        match self {
            Filter::Jpeg(f) => f.stripped(),
            Filter::Png(f) => f.stripped(),
            Filter::Webp(f) => f.stripped(),
            Filter::Pass => false,
        }
    }
}

/// Runs a filter over a whole buffer (tests, fuzzing).
pub fn strip_all(kind: Kind, data: &[u8]) -> Result<(Vec<u8>, bool), StripError> {
    let mut f = Filter::for_kind(kind);
    let mut out: Vec<Bytes> = Vec::new();
    f.push(Bytes::copy_from_slice(data), &mut out)?;
    f.finish()?;
    Ok((out.concat(), f.stripped()))
}

/// Collects exactly `N` header bytes across pieces.
#[derive(Debug)]
pub(crate) struct Fill<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> Fill<N> {
    pub(crate) fn new() -> Self {
        Fill {
            buf: [0; N],
            len: 0,
        }
    }

    /// Takes what it needs from `input[*i..]`; the full array once complete.
    pub(crate) fn fill(&mut self, input: &[u8], i: &mut usize) -> Option<[u8; N]> {
        let take = (N - self.len).min(input.len() - *i);
        self.buf[self.len..self.len + take].copy_from_slice(&input[*i..*i + take]);
        self.len += take;
        *i += take;
        if self.len == N {
            self.len = 0;
            Some(self.buf)
        } else {
            None
        }
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    use bytes::Bytes;

    use super::{Filter, StripError};
    use crate::sniff::Kind;

    /// Runs the filter with the input cut at `cuts`.
    pub(crate) fn strip_pieces(
        kind: Kind,
        data: &[u8],
        cuts: &[usize],
    ) -> Result<(Vec<u8>, bool), StripError> {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
        cuts.sort_unstable();
        cuts.push(data.len());
        let mut f = Filter::for_kind(kind);
        let mut out: Vec<Bytes> = Vec::new();
        let mut at = 0;
        for c in cuts {
            f.push(Bytes::copy_from_slice(&data[at..c]), &mut out)?;
            at = c;
        }
        f.finish()?;
        Ok((out.concat(), f.stripped()))
    }
}
