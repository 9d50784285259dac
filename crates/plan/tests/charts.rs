//! Charts are written and are valid SVG and PNG of the expected size.

use continuum_plan::capacity::Capacity;
use continuum_plan::chart::{SIZE, write_all};
use continuum_plan::cost::PriceBook;
use continuum_plan::plan;
use continuum_plan::profile::Profile;
use std::path::Path;

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/plan");

#[test]
fn svg_and_png_charts() {
    let p = Profile::load(&Path::new(EXAMPLES).join("profile.toml")).unwrap();
    let plan = plan(&p, &Capacity::default(), &PriceBook::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("charts");
    let files = write_all(&plan, &out).unwrap();
    let names: Vec<_> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["cost.svg", "cost.png", "demand.svg", "demand.png"]);
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        assert!(
            bytes.len() > 1000,
            "{} is {} bytes",
            f.display(),
            bytes.len()
        );
        if f.extension().unwrap() == "svg" {
            let svg = String::from_utf8(bytes).unwrap();
            let svg = svg.trim_start();
            let svg = svg
                .strip_prefix("<?xml")
                .map_or(svg, |r| &r[r.find("?>").unwrap() + 2..])
                .trim_start();
            assert!(svg.starts_with("<svg"), "{}", &svg[..40.min(svg.len())]);
            assert!(svg.contains(&format!("width=\"{}\"", SIZE.0)), "width");
            assert!(svg.contains(&format!("height=\"{}\"", SIZE.1)), "height");
            assert!(svg.trim_end().ends_with("</svg>"));
            assert!(
                svg.contains("<text") && svg.contains("<polyline"),
                "text and lines drawn"
            );
            if f.ends_with("cost.svg") {
                assert!(svg.contains("self-hosted break-even"), "break-even marked");
            }
        } else {
            // Signature, then the IHDR chunk with width and height.
            assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
            assert_eq!(&bytes[12..16], b"IHDR");
            let be = |i: usize| u32::from_be_bytes(bytes[i..i + 4].try_into().unwrap());
            assert_eq!((be(16), be(20)), SIZE);
            let decoder = png::Decoder::new(std::io::Cursor::new(&bytes));
            let mut reader = decoder.read_info().unwrap();
            let info = reader.info();
            assert_eq!((info.width, info.height), SIZE);
            let mut buf = vec![0; reader.output_buffer_size()];
            let frame = reader.next_frame(&mut buf).unwrap();
            let pixels = &buf[..frame.buffer_size()];
            // Not blank: white background plus coloured lines and text.
            let distinct: std::collections::HashSet<_> = pixels.chunks(3).take(2_000_000).collect();
            assert!(distinct.len() > 20, "{} colours", distinct.len());
        }
    }
}
