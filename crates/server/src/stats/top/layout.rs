//! Where `top`'s sections go on a screen of a given size: the title, headline, stages and footer
//! always; then, by priority, the backends, the rate chart, admission and the cluster, each
//! dropped when it does not fit (an 80x24 terminal keeps the first two), the chart taking what
//! space is left.

use ratatui::layout::Rect;

/// From this width, the backends and admission share a band side by side (narrower, the backends'
/// health column would have no room for a problem).
pub const SIDE_BY_SIDE: u16 = 140;
/// Admission's width beside the backends: its title and four columns.
const ADMISSION_WIDTH: u16 = 52;
/// Admission's height: a border, a header, three priorities, a border.
const ADMISSION_HEIGHT: u16 = 6;
/// The chart's smallest useful height: two rows of bars inside a border.
const RATES_MIN: u16 = 4;
/// The chart's largest height: ten rows of bars draw the shape; more would only stretch it.
const RATES_MAX: u16 = 12;
/// A table's height around its rows: two borders and a header.
const TABLE_CHROME: u16 = 3;

/// The rectangle of each section; `None` for one dropped for lack of room.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub title: Rect,
    pub headline: Rect,
    pub stages: Rect,
    pub rates: Option<Rect>,
    pub backends: Option<Rect>,
    pub admission: Option<Rect>,
    pub cluster: Option<Rect>,
    pub footer: Rect,
}

/// How many rows the variable tables have.
#[derive(Clone, Copy, Debug, Default)]
pub struct Rows {
    pub stages: usize,
    pub backends: usize,
    /// `None` when the node is not in a cluster.
    pub nodes: Option<usize>,
}

/// Places the sections in `area`.
pub fn plan(area: Rect, rows: Rows) -> Plan {
    let mut left = area.height;
    let mut take = |want: u16| {
        let got = want.min(left);
        left -= got;
        got
    };
    let title = take(1);
    let footer = take(1);
    let headline = take(2);
    let stages = take(table_height(rows.stages));

    let side_by_side = area.width >= SIDE_BY_SIDE;
    let backends_want = table_height(rows.backends.max(1));
    let (backends, admission) = if side_by_side {
        let band = fit(&mut left, backends_want.max(ADMISSION_HEIGHT), ADMISSION_HEIGHT);
        (band, band)
    } else {
        // Backends first: a backend that is down is what an operator most needs to see.
        (fit(&mut left, backends_want, TABLE_CHROME + 1), None)
    };
    let rates = fit(&mut left, RATES_MIN, RATES_MIN);
    let admission = if side_by_side {
        admission
    } else {
        fit(&mut left, ADMISSION_HEIGHT, ADMISSION_HEIGHT)
    };
    let cluster = rows
        .nodes
        .and_then(|nodes| fit(&mut left, table_height(nodes.max(1)), TABLE_CHROME + 1));
    // What no section wanted goes to the chart, up to its largest; the rest stays blank above
    // the footer.
    let rates = rates.map(|h| (h + left).min(RATES_MAX));

    // Top to bottom in reading order, whatever the priorities were.
    let mut y = area.y;
    let mut next = |height: u16| {
        let rect = Rect::new(area.x, y, area.width, height);
        y += height;
        rect
    };
    let title = next(title);
    let headline = next(headline);
    let stages = next(stages);
    let rates = rates.map(&mut next);
    let (backends, admission) = if side_by_side {
        match backends.map(&mut next) {
            Some(band) => {
                let left = band.width - ADMISSION_WIDTH;
                (
                    Some(Rect { width: left, ..band }),
                    Some(Rect {
                        x: band.x + left,
                        width: ADMISSION_WIDTH,
                        ..band
                    }),
                )
            }
            None => (None, None),
        }
    } else {
        (backends.map(&mut next), admission.map(&mut next))
    };
    let cluster = cluster.map(&mut next);
    // The footer keeps to the last line.
    let footer = Rect::new(area.x, area.bottom() - footer, area.width, footer);
    Plan {
        title,
        headline,
        stages,
        rates,
        backends,
        admission,
        cluster,
        footer,
    }
}

/// A bordered table of `rows` rows with a header.
fn table_height(rows: usize) -> u16 {
    u16::try_from(rows)
        .unwrap_or(u16::MAX)
        .saturating_add(TABLE_CHROME)
}

/// `want` rows when that many are left, all that is left when at least `min` are, else nothing.
fn fit(left: &mut u16, want: u16, min: u16) -> Option<u16> {
    let got = if *left >= want {
        want
    } else if *left >= min {
        *left
    } else {
        return None;
    };
    *left -= got;
    Some(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: Rows = Rows {
        stages: 5,
        backends: 3,
        nodes: Some(2),
    };

    #[test]
    fn a_small_terminal_keeps_stages_backends_and_the_chart() {
        let plan = plan(Rect::new(0, 0, 80, 24), SAMPLE);
        assert_eq!(plan.stages.height, 8);
        assert_eq!(plan.backends.map(|r| r.height), Some(6));
        assert!(plan.rates.is_some_and(|r| r.height >= RATES_MIN));
        assert_eq!((plan.admission, plan.cluster), (None, None));
        assert_eq!(plan.footer.y, 23);
    }

    #[test]
    fn a_large_terminal_shows_everything_in_order() {
        let plan = plan(Rect::new(0, 0, 160, 50), SAMPLE);
        let (rates, backends, admission, cluster) = (
            plan.rates.unwrap(),
            plan.backends.unwrap(),
            plan.admission.unwrap(),
            plan.cluster.unwrap(),
        );
        assert!(plan.stages.bottom() <= rates.y && rates.bottom() <= backends.y);
        assert_eq!((backends.y, backends.right()), (admission.y, admission.x));
        assert!(backends.bottom() <= cluster.y && cluster.bottom() <= plan.footer.y);
        assert_eq!(plan.footer.bottom(), 50);
    }

    #[test]
    fn every_size_stays_inside_the_screen() {
        for (w, h) in [
            (0, 0),
            (1, 1),
            (20, 3),
            (40, 10),
            (80, 24),
            (139, 30),
            (140, 30),
            (300, 100),
        ] {
            let area = Rect::new(0, 0, w, h);
            let plan = plan(area, SAMPLE);
            let all = [plan.title, plan.headline, plan.stages, plan.footer]
                .into_iter()
                .chain(
                    [plan.rates, plan.backends, plan.admission, plan.cluster]
                        .into_iter()
                        .flatten(),
                );
            for rect in all {
                assert!(
                    area.union(rect) == area || rect.area() == 0,
                    "{rect:?} outside {area:?}"
                );
            }
        }
    }
}
