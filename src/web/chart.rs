//! The dashboard's bar chart, drawn on the server as SVG: refused and invite-required attempts
//! per domain. The geometry is computed here; the template draws it (no script, no style
//! attribute: the pages' Content-Security-Policy forbids both).

use serde::Serialize;

/// Width of the bars' area, in SVG units.
const BARS_WIDTH: f64 = 480.0;
/// Height of one row.
const ROW: u32 = 28;
/// Height of a bar.
const BAR: u32 = 18;
/// Where bars start (the labels are on their left).
const LABELS_WIDTH: u32 = 220;

/// One domain's row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BarRow {
    /// The label (the domain).
    pub label: String,
    /// Denied attempts.
    pub denied: i64,
    /// Invite-required attempts.
    pub invite_required: i64,
    /// Top of the row.
    pub y: u32,
    /// Vertical middle of the row's text.
    pub text_y: u32,
    /// Where the first segment starts.
    pub x: u32,
    /// Width of the denied segment.
    pub denied_width: f64,
    /// Width of the invite-required segment.
    pub invite_width: f64,
    /// Where the invite-required segment starts.
    pub invite_x: f64,
    /// Where the total is written.
    pub total_x: f64,
}

/// A stacked horizontal bar chart.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BarChart {
    /// The rows, largest first.
    pub rows: Vec<BarRow>,
    /// Overall width.
    pub width: u32,
    /// Overall height.
    pub height: u32,
    /// The largest total (the scale).
    pub max: i64,
}

/// Lays out rows of (label, denied, invite-required), in the order given.
pub fn bars(data: &[(String, i64, i64)]) -> BarChart {
    let max = data
        .iter()
        .map(|(_, d, i)| d.saturating_add(*i))
        .max()
        .unwrap_or(0)
        .max(1);
    let scale = BARS_WIDTH / max as f64;
    let rows = data
        .iter()
        .zip(0u32..)
        .map(|((label, denied, invite), i)| {
            let y = i * ROW + 4;
            let denied_width = (*denied as f64 * scale).max(if *denied > 0 { 1.0 } else { 0.0 });
            let invite_width = (*invite as f64 * scale).max(if *invite > 0 { 1.0 } else { 0.0 });
            let x = LABELS_WIDTH;
            BarRow {
                label: label.clone(),
                denied: *denied,
                invite_required: *invite,
                y,
                text_y: y + BAR / 2 + 5,
                x,
                denied_width: round(denied_width),
                invite_width: round(invite_width),
                invite_x: round(f64::from(x) + denied_width),
                total_x: round(f64::from(x) + denied_width + invite_width + 6.0),
            }
        })
        .collect::<Vec<_>>();
    let count = u32::try_from(rows.len()).unwrap_or(u32::MAX);
    BarChart {
        height: count.saturating_mul(ROW) + 8,
        width: LABELS_WIDTH + BARS_WIDTH as u32 + 60,
        rows,
        max,
    }
}

fn round(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_scale_to_the_largest_total() {
        let c = bars(&[("a.example".into(), 30, 10), ("b.example".into(), 0, 20)]);
        assert_eq!(c.max, 40);
        assert_eq!(c.rows.len(), 2);
        let a = &c.rows[0];
        assert_eq!(a.denied_width + a.invite_width, BARS_WIDTH);
        assert_eq!(a.invite_x, f64::from(LABELS_WIDTH) + 360.0);
        let b = &c.rows[1];
        assert_eq!(b.denied_width, 0.0);
        assert_eq!(b.invite_width, 240.0);
        assert!(b.y > a.y);
        assert_eq!(bars(&[]).rows.len(), 0);
        // A tiny count is still visible.
        let tiny = bars(&[("x".into(), 10_000, 1)]);
        assert!(tiny.rows[0].invite_width >= 1.0);
    }
}
