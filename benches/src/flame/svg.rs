//! A flame graph as SVG, from folded stacks: each frame a box as wide as its share of the
//! samples, callees stacked on their callers, siblings in name order (so equal stacks from
//! different moments merge). Hovering a box shows its name, samples and share. Written by hand,
//! as the other plots are (`report/svg.rs`): no plotting dependency.

use super::fold::Folded;
use crate::report::svg::escape;
use std::collections::BTreeMap;
use std::fmt::Write;

const WIDTH: f64 = 1200.0;
const ROW: f64 = 16.0;
const TOP: f64 = 34.0;
const BOTTOM: f64 = 8.0;
/// Boxes narrower than this are left out (their samples still count in their callers').
const MIN_WIDTH: f64 = 0.3;
/// Roughly what one character of 11 px text takes.
const CHAR: f64 = 6.6;

#[derive(Debug, Default)]
struct Node {
    samples: u64,
    children: BTreeMap<String, Node>,
}

impl Node {
    fn depth(&self) -> usize {
        1 + self.children.values().map(Node::depth).max().unwrap_or(0)
    }
}

fn tree(folded: &Folded) -> Node {
    let mut root = Node::default();
    for (stack, &samples) in folded {
        root.samples += samples;
        let mut node = &mut root;
        for frame in stack.split(';') {
            node = node.children.entry(frame.to_string()).or_default();
            node.samples += samples;
        }
    }
    root
}

/// The flame graph of `folded`, titled `title`.
pub fn render(title: &str, folded: &Folded) -> String {
    let root = tree(folded);
    let depth = root.depth();
    let height = TOP + ROW * depth as f64 + BOTTOM;
    let mut s = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="monospace" font-size="11"><rect width="100%" height="100%" fill="#fdfdf6"/><text x="{:.1}" y="20" text-anchor="middle" font-family="sans-serif" font-size="14">{}</text>"##,
        WIDTH / 2.0,
        escape(title)
    );
    let total = root.samples.max(1) as f64;
    let canvas = Canvas {
        total,
        bottom: height - BOTTOM,
    };
    canvas.frame(
        &mut s,
        &format!("all ({} samples)", root.samples),
        &root,
        0.0,
        0,
    );
    canvas.children(&mut s, &root, 0.0, 1);
    s.push_str("</svg>\n");
    s
}

struct Canvas {
    total: f64,
    /// The y of the bottom row's lower edge.
    bottom: f64,
}

impl Canvas {
    fn children(&self, s: &mut String, node: &Node, mut x: f64, depth: usize) {
        for (name, child) in &node.children {
            let width = WIDTH * child.samples as f64 / self.total;
            if width >= MIN_WIDTH {
                self.frame(s, name, child, x, depth);
                self.children(s, child, x, depth + 1);
            }
            x += width;
        }
    }

    fn frame(&self, s: &mut String, name: &str, node: &Node, x: f64, depth: usize) {
        let width = WIDTH * node.samples as f64 / self.total;
        let y = self.bottom - ROW * (depth + 1) as f64;
        let share = 100.0 * node.samples as f64 / self.total;
        let _ = write!(
            s,
            r#"<g><title>{} ({} samples, {share:.2}%)</title><rect x="{x:.2}" y="{y:.1}" width="{width:.2}" height="{:.1}" fill="{}" rx="1"/>"#,
            escape(name),
            node.samples,
            ROW - 1.0,
            color(name)
        );
        let fits = ((width - 6.0) / CHAR).floor();
        if fits >= 3.0 {
            let fits = fits as usize;
            let label: String = if name.chars().count() <= fits {
                name.to_string()
            } else {
                name.chars().take(fits - 2).chain("..".chars()).collect()
            };
            let _ = write!(
                s,
                r#"<text x="{:.2}" y="{:.1}">{}</text>"#,
                x + 3.0,
                y + ROW - 4.5,
                escape(&label)
            );
        }
        s.push_str("</g>");
    }
}

/// A warm colour from the name, stable from run to run so the same frame looks the same.
fn color(name: &str) -> String {
    let mut hash: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        hash = (hash ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    let r = 205 + hash % 50;
    let g = (hash >> 8) % 190 + 40;
    let b = (hash >> 16) % 55;
    format!("rgb({r},{g},{b})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxes_are_as_wide_as_their_share_and_stack_on_their_callers() {
        let folded: Folded = [
            ("worker;poll;read".to_string(), 3),
            ("worker;poll;write".to_string(), 1),
            ("exporter;encode".to_string(), 4),
        ]
        .into_iter()
        .collect();
        let svg = render("test & title", &folded);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("test &amp; title"));
        assert!(svg.contains("<title>all (8 samples) (8 samples, 100.00%)</title>"));
        // worker and exporter are half each; read is 3/8 of the width, stacked two rows up.
        assert!(svg.contains("<title>worker (4 samples, 50.00%)</title><rect x=\"600.00\""));
        assert!(svg.contains("<title>exporter (4 samples, 50.00%)</title><rect x=\"0.00\""));
        let read = "<title>read (3 samples, 37.50%)</title><rect x=\"600.00\"";
        assert!(svg.contains(read), "{svg}");
        assert!(svg.contains("width=\"450.00\""));
        // Four rows: all, thread, poll, read/write.
        assert_eq!(tree(&folded).depth(), 4);
    }

    #[test]
    fn long_names_are_cut_to_their_box_and_tiny_boxes_left_out() {
        let long = "a".repeat(400);
        let folded: Folded = [(long.clone(), 100_000), ("tiny".to_string(), 1)]
            .into_iter()
            .collect();
        let svg = render("t", &folded);
        assert!(svg.contains(&format!(">{}..</text>", "a".repeat(178))));
        assert!(
            !svg.contains("tiny ("),
            "a box under {MIN_WIDTH} px is not drawn"
        );
    }
}
