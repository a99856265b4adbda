//! Thumbnails: decoding an upload with the `image` crate, bounded, and
//! making the configured sizes of it the way Synapse's thumbnailer does
//! (`crop`: exactly the size asked, cut from the middle of the scaled
//! image; `scale`: the largest size of the same aspect within the box,
//! never larger than the original), and picking the stored thumbnail that
//! best answers a request (Synapse's `_select_thumbnail`).
//!
//! Everything here is synchronous CPU work: callers run it in
//! `spawn_blocking`. Decoding is bounded before it starts: the header's
//! dimensions are read first and an image with more than
//! `max_image_pixels` pixels is refused without decoding a row of it (a
//! 100,000 x 100,000 PNG of a few hundred bytes would otherwise ask for
//! 40 GB), and the decoder's allocations are capped too.

use std::io::{BufReader, Cursor};
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};
use serde::Deserialize;

/// `crop` or `scale` (the spec's `method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ThumbnailMethod {
    Crop,
    Scale,
}

impl ThumbnailMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            ThumbnailMethod::Crop => "crop",
            ThumbnailMethod::Scale => "scale",
        }
    }

    pub fn parse(method: &str) -> Option<ThumbnailMethod> {
        match method {
            "crop" => Some(ThumbnailMethod::Crop),
            "scale" => Some(ThumbnailMethod::Scale),
            _ => None,
        }
    }
}

/// One entry of `media.thumbnail_sizes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThumbnailSize {
    pub width: u32,
    pub height: u32,
    pub method: ThumbnailMethod,
}

/// Why no thumbnail could be made.
#[derive(Debug, thiserror::Error)]
pub enum ThumbnailError {
    #[error("not an image that can be thumbnailed")]
    NotAnImage,
    #[error("image of {width}x{height} pixels, more than the {max} allowed")]
    TooLarge { width: u32, height: u32, max: u64 },
    #[error("image could not be decoded: {0}")]
    Corrupt(String),
    #[error("thumbnail could not be encoded: {0}")]
    Encode(String),
}

/// A thumbnail made, before it is stored.
#[derive(Debug, Clone)]
pub struct MadeThumbnail {
    pub width: u32,
    pub height: u32,
    pub method: ThumbnailMethod,
    pub content_type: &'static str,
    pub bytes: Vec<u8>,
}

/// The type of the thumbnails of an upload of `content_type`, if it is one
/// of the formats thumbnailed: JPEG stays JPEG, PNG, GIF and WebP become PNG
/// (Synapse's mapping).
pub fn thumbnail_type(content_type: &str) -> Option<&'static str> {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "image/jpeg" | "image/jpg" | "image/pjpeg" => Some("image/jpeg"),
        "image/png" | "image/gif" | "image/webp" | "image/apng" => Some("image/png"),
        _ => None,
    }
}

/// Decodes the image at `path` (at most `max_pixels` pixels) and makes one
/// thumbnail per distinct size of `sizes`, of type `output_type`.
pub fn make_thumbnails(
    path: &Path,
    sizes: &[ThumbnailSize],
    max_pixels: u64,
    output_type: &'static str,
) -> Result<Vec<MadeThumbnail>, ThumbnailError> {
    let image = decode_bounded(path, max_pixels)?;
    let (width, height) = (image.width(), image.height());
    if width == 0 || height == 0 {
        return Err(ThumbnailError::Corrupt("image without pixels".into()));
    }
    let mut targets: Vec<(u32, u32, ThumbnailMethod)> = Vec::new();
    for size in sizes {
        let target = match size.method {
            ThumbnailMethod::Crop => (size.width, size.height, ThumbnailMethod::Crop),
            ThumbnailMethod::Scale => {
                let (w, h) = aspect(width, height, size.width, size.height);
                (w.min(width), h.min(height), ThumbnailMethod::Scale)
            }
        };
        if !targets.contains(&target) {
            targets.push(target);
        }
    }
    targets
        .into_iter()
        .map(|(w, h, method)| {
            let resized = match method {
                ThumbnailMethod::Crop => crop(&image, w, h),
                ThumbnailMethod::Scale => {
                    image.resize_exact(w, h, image::imageops::FilterType::Triangle)
                }
            };
            Ok(MadeThumbnail {
                width: resized.width(),
                height: resized.height(),
                method,
                content_type: output_type,
                bytes: encode(&resized, output_type)?,
            })
        })
        .collect()
}

/// The width and height an image's header gives, for the formats
/// thumbnailed; `None` for anything else or a header that does not parse.
pub fn dimensions(path: &Path) -> Option<(u32, u32)> {
    let file = std::fs::File::open(path).ok()?;
    let reader = ImageReader::new(BufReader::new(file))
        .with_guessed_format()
        .ok()?;
    match reader.format() {
        Some(ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::Gif | ImageFormat::WebP) => {
            reader.into_dimensions().ok()
        }
        _ => None,
    }
}

/// The image at `path`, decoded only if its header says it has at most
/// `max_pixels` pixels, with the decoder's memory capped accordingly.
pub fn decode_bounded(path: &Path, max_pixels: u64) -> Result<DynamicImage, ThumbnailError> {
    let file = std::fs::File::open(path).map_err(|e| ThumbnailError::Corrupt(e.to_string()))?;
    let reader = ImageReader::new(BufReader::new(file))
        .with_guessed_format()
        .map_err(|e| ThumbnailError::Corrupt(e.to_string()))?;
    // Only the decoders of these formats ever see an upload.
    match reader.format() {
        Some(ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::Gif | ImageFormat::WebP) => {}
        _ => return Err(ThumbnailError::NotAnImage),
    }
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| ThumbnailError::Corrupt(e.to_string()))?;
    let (width, height) = decoder.dimensions();
    if u64::from(width) * u64::from(height) > max_pixels {
        return Err(ThumbnailError::TooLarge {
            width,
            height,
            max: max_pixels,
        });
    }
    let mut limits = Limits::default();
    // Eight bytes a pixel (16-bit RGBA) and the decoder's own buffers.
    limits.max_alloc = Some(
        max_pixels
            .saturating_mul(8)
            .saturating_add(64 * 1024 * 1024),
    );
    decoder
        .set_limits(limits)
        .map_err(|_| ThumbnailError::TooLarge {
            width,
            height,
            max: max_pixels,
        })?;
    let orientation = decoder.orientation().ok();
    let mut image =
        DynamicImage::from_decoder(decoder).map_err(|e| ThumbnailError::Corrupt(e.to_string()))?;
    if let Some(orientation) = orientation {
        image.apply_orientation(orientation);
    }
    Ok(image)
}

/// The largest size of the image's aspect within `max_width` x
/// `max_height`, at least 1x1 (Synapse's `aspect`).
pub fn aspect(width: u32, height: u32, max_width: u32, max_height: u32) -> (u32, u32) {
    let (w, h) = (u64::from(width), u64::from(height));
    let (mw, mh) = (u64::from(max_width), u64::from(max_height));
    if mw * h < mh * w {
        (max_width, clamp_u32((mw * h / w).max(1)))
    } else {
        (clamp_u32((mh * w / h).max(1)), max_height)
    }
}

fn clamp_u32(value: u64) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

/// Scales `image` to cover `width` x `height` and cuts that size from its
/// middle (Synapse's `crop`).
fn crop(image: &DynamicImage, width: u32, height: u32) -> DynamicImage {
    let (iw, ih) = (u64::from(image.width()), u64::from(image.height()));
    let (w, h) = (u64::from(width), u64::from(height));
    let (scaled_w, scaled_h, x, y) = if w * ih > h * iw {
        let scaled_h = (w * ih / iw).max(1);
        (w, scaled_h, 0, scaled_h.saturating_sub(h) / 2)
    } else {
        let scaled_w = (h * iw / ih).max(1);
        (scaled_w, h, scaled_w.saturating_sub(w) / 2, 0)
    };
    image
        .resize_exact(
            clamp_u32(scaled_w),
            clamp_u32(scaled_h),
            image::imageops::FilterType::Triangle,
        )
        .crop_imm(clamp_u32(x), clamp_u32(y), width, height)
}

fn encode(image: &DynamicImage, content_type: &str) -> Result<Vec<u8>, ThumbnailError> {
    let mut bytes = Cursor::new(Vec::new());
    if content_type == "image/jpeg" {
        // JPEG has no alpha channel.
        let rgb = DynamicImage::ImageRgb8(image.to_rgb8());
        let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 80);
        rgb.write_with_encoder(encoder)
            .map_err(|e| ThumbnailError::Encode(e.to_string()))?;
    } else {
        let image = match image {
            DynamicImage::ImageRgb8(_) | DynamicImage::ImageRgba8(_) => image.clone(),
            _ if image.color().has_alpha() => DynamicImage::ImageRgba8(image.to_rgba8()),
            _ => DynamicImage::ImageRgb8(image.to_rgb8()),
        };
        image
            .write_to(&mut bytes, ImageFormat::Png)
            .map_err(|e| ThumbnailError::Encode(e.to_string()))?;
    }
    Ok(bytes.into_inner())
}

/// A thumbnail that exists, as [`select`] compares them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub width: u32,
    pub height: u32,
    pub method: ThumbnailMethod,
    pub content_type: String,
    pub length: i64,
}

/// A candidate with what it is compared by, best first: aspect, size
/// reached, size difference, type, file length.
type Ranked<'a> = ((i64, i64, i64, bool, i64), &'a Candidate);

/// The stored thumbnail that best answers a request for `width` x `height`
/// by `method` of type `desired_type` (Synapse's `_select_thumbnail`):
/// among thumbnails of that method, those at least as large in one
/// dimension first; then the closest aspect (crop), the closest size, the
/// wanted type and the smallest file.
pub fn select<'a>(
    candidates: &'a [Candidate],
    width: u32,
    height: u32,
    method: ThumbnailMethod,
    desired_type: &str,
) -> Option<&'a Candidate> {
    let (dw, dh) = (i64::from(width), i64::from(height));
    let mut large_enough: Vec<Ranked<'a>> = Vec::new();
    let mut smaller: Vec<Ranked<'a>> = Vec::new();
    for candidate in candidates.iter().filter(|c| c.method == method) {
        let (tw, th) = (i64::from(candidate.width), i64::from(candidate.height));
        let aspect_quality = match method {
            ThumbnailMethod::Crop => (dw * th - dh * tw).abs(),
            ThumbnailMethod::Scale => 0,
        };
        let min_quality = match method {
            ThumbnailMethod::Crop if !(dw <= tw && dh <= th) => 1,
            _ => 0,
        };
        let size_quality = ((dw - tw) * (dh - th)).abs();
        let type_quality = candidate.content_type != desired_type;
        let key = (
            aspect_quality,
            min_quality,
            size_quality,
            type_quality,
            candidate.length,
        );
        if tw >= dw || th >= dh {
            large_enough.push((key, candidate));
        } else {
            smaller.push((key, candidate));
        }
    }
    let best = |list: Vec<Ranked<'a>>| {
        // `min_by_key` keeps the first of equals, as Synapse's `min` does.
        list.into_iter()
            .min_by_key(|(key, _)| *key)
            .map(|(_, candidate)| candidate)
    };
    best(large_enough).or_else(|| best(smaller))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32) -> Vec<u8> {
        let image = DynamicImage::ImageRgb8(image::RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
        }));
        let mut bytes = Cursor::new(Vec::new());
        image
            .write_to(&mut bytes, ImageFormat::Png)
            .expect("encode png");
        bytes.into_inner()
    }

    fn temp(bytes: &[u8]) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!(
            "lattice-thumb-test-{}",
            crate::media::id::MediaId::generate()
        ));
        std::fs::write(&path, bytes).expect("write");
        path
    }

    fn sizes() -> Vec<ThumbnailSize> {
        vec![
            ThumbnailSize {
                width: 32,
                height: 32,
                method: ThumbnailMethod::Crop,
            },
            ThumbnailSize {
                width: 320,
                height: 240,
                method: ThumbnailMethod::Scale,
            },
            ThumbnailSize {
                width: 40,
                height: 40,
                method: ThumbnailMethod::Scale,
            },
        ]
    }

    #[test]
    fn crop_is_exact_and_scale_keeps_the_aspect_without_growing() {
        let path = temp(&png(200, 100));
        let made = make_thumbnails(&path, &sizes(), 1_000_000, "image/png").expect("thumbnails");
        let dims: Vec<(u32, u32, ThumbnailMethod)> =
            made.iter().map(|t| (t.width, t.height, t.method)).collect();
        assert_eq!(
            dims,
            vec![
                (32, 32, ThumbnailMethod::Crop),
                // 320x240 would be 320x160: never larger than the original.
                (200, 100, ThumbnailMethod::Scale),
                (40, 20, ThumbnailMethod::Scale),
            ]
        );
        for thumbnail in &made {
            let decoded = image::load_from_memory(&thumbnail.bytes).expect("a png");
            assert_eq!(
                (decoded.width(), decoded.height()),
                (thumbnail.width, thumbnail.height)
            );
        }
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn jpeg_thumbnails_are_jpeg() {
        let path = temp(&png(50, 50));
        let made = make_thumbnails(&path, &sizes()[..1], 1_000_000, "image/jpeg").expect("made");
        assert_eq!(
            image::guess_format(&made[0].bytes).expect("format"),
            ImageFormat::Jpeg
        );
        let _ = std::fs::remove_file(path);
    }

    /// A PNG of `width` x `height` that is only a header and one IDAT
    /// chunk: what a decompression bomb looks like before it is decoded.
    pub(crate) fn png_header_claiming(width: u32, height: u32) -> Vec<u8> {
        let mut bytes = png(1, 1);
        // IHDR's width and height follow the 8-byte signature, the chunk's
        // length and type; its checksum (over type and data) follows them.
        bytes[16..20].copy_from_slice(&width.to_be_bytes());
        bytes[20..24].copy_from_slice(&height.to_be_bytes());
        let crc = crc32(&bytes[12..29]);
        bytes[29..33].copy_from_slice(&crc.to_be_bytes());
        bytes
    }

    /// CRC-32 (PNG's chunk checksum), bit by bit: test data only.
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for byte in bytes {
            crc ^= u32::from(*byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn a_huge_image_is_refused_before_decoding() {
        let path = temp(&png_header_claiming(100_000, 100_000));
        let started = std::time::Instant::now();
        let error =
            make_thumbnails(&path, &sizes(), 32 * 1024 * 1024, "image/png").expect_err("refused");
        assert!(
            matches!(error, ThumbnailError::TooLarge { width: 100_000, .. }),
            "{error}"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn text_and_corrupt_images_are_refused() {
        let path = temp(b"just some text, not an image");
        assert!(matches!(
            make_thumbnails(&path, &sizes(), 1_000_000, "image/png"),
            Err(ThumbnailError::NotAnImage)
        ));
        let mut corrupt = png(20, 20);
        corrupt.truncate(40);
        std::fs::write(&path, corrupt).expect("write");
        assert!(matches!(
            make_thumbnails(&path, &sizes(), 1_000_000, "image/png"),
            Err(ThumbnailError::Corrupt(_))
        ));
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn selection_prefers_large_enough_then_closest() {
        let candidate = |width, height, method, length| Candidate {
            width,
            height,
            method,
            content_type: "image/png".into(),
            length,
        };
        let candidates = vec![
            candidate(32, 32, ThumbnailMethod::Crop, 10),
            candidate(96, 96, ThumbnailMethod::Crop, 20),
            candidate(320, 240, ThumbnailMethod::Scale, 30),
            candidate(640, 480, ThumbnailMethod::Scale, 40),
        ];
        let pick = |w, h, m| select(&candidates, w, h, m, "image/png").map(|c| (c.width, c.height));
        assert_eq!(pick(40, 40, ThumbnailMethod::Crop), Some((96, 96)));
        assert_eq!(pick(20, 20, ThumbnailMethod::Crop), Some((32, 32)));
        assert_eq!(pick(300, 200, ThumbnailMethod::Scale), Some((320, 240)));
        assert_eq!(pick(1000, 1000, ThumbnailMethod::Scale), Some((640, 480)));
        assert_eq!(pick(500, 400, ThumbnailMethod::Scale), Some((640, 480)));
        assert_eq!(select(&[], 1, 1, ThumbnailMethod::Crop, "image/png"), None);
    }

    #[test]
    fn aspect_fits_the_box() {
        assert_eq!(aspect(200, 100, 320, 240), (320, 160));
        assert_eq!(aspect(100, 200, 320, 240), (120, 240));
        assert_eq!(aspect(10_000, 1, 32, 32), (32, 1));
    }

    #[test]
    fn thumbnail_types_follow_synapse() {
        assert_eq!(thumbnail_type("image/jpeg"), Some("image/jpeg"));
        assert_eq!(thumbnail_type("IMAGE/PNG; x=y"), Some("image/png"));
        assert_eq!(thumbnail_type("image/gif"), Some("image/png"));
        assert_eq!(thumbnail_type("image/svg+xml"), None);
        assert_eq!(thumbnail_type("text/plain"), None);
    }
}
