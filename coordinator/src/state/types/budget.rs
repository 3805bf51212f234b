//! Budget vocabulary: where a budget applies (scope), over which calendar period, and the
//! level it has reached. Periods start and end on UTC calendar boundaries.

use qm_shared::timestamp::{civil_from_days, days_from_civil, DAY_MS};
use qm_shared::Invalid;
use serde::{Deserialize, Serialize};

use super::Millis;

/// Where a budget applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Scope {
    Org,
    Team,
    Project,
    /// One work item (`j<id>`).
    Item,
}

impl Scope {
    pub const ALL: [Scope; 4] = [Scope::Org, Scope::Team, Scope::Project, Scope::Item];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Org => "org",
            Scope::Team => "team",
            Scope::Project => "project",
            Scope::Item => "work-item",
        }
    }
}

impl std::str::FromStr for Scope {
    type Err = Invalid;
    fn from_str(s: &str) -> Result<Scope, Invalid> {
        Scope::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| Invalid::new("scope", format!("{s:?} is not one of org, team, project, work-item")))
    }
}

/// A budget's period; spending starts again from zero when it rolls over (UTC).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Period {
    Day,
    /// Monday to Sunday.
    Week,
    /// A calendar month.
    Month,
    /// Never rolls over.
    Total,
}

impl Period {
    pub const ALL: [Period; 4] = [Period::Day, Period::Week, Period::Month, Period::Total];

    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
            Period::Total => "total",
        }
    }

    /// Start of the period containing `now`.
    pub fn start(self, now: Millis) -> Millis {
        let days = now / DAY_MS;
        match self {
            Period::Day => days * DAY_MS,
            // 1970-01-01 was a Thursday: Monday is 3 days before day 0's week offset.
            Period::Week => (days - (days + 3) % 7) * DAY_MS,
            Period::Month => {
                let (y, m, _) = civil_from_days(days as i64);
                days_from_civil(y, m, 1) as u64 * DAY_MS
            }
            Period::Total => 0,
        }
    }

    /// End of the period starting at `start`; `None` for `total`.
    pub fn end(self, start: Millis) -> Option<Millis> {
        match self {
            Period::Day => Some(start + DAY_MS),
            Period::Week => Some(start + 7 * DAY_MS),
            Period::Month => {
                let (y, m, _) = civil_from_days((start / DAY_MS) as i64);
                let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                Some(days_from_civil(y, m, 1) as u64 * DAY_MS)
            }
            Period::Total => None,
        }
    }
}

impl std::str::FromStr for Period {
    type Err = Invalid;
    fn from_str(s: &str) -> Result<Period, Invalid> {
        Period::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| Invalid::new("period", format!("{s:?} is not one of day, week, month, total")))
    }
}

/// How far into its limit a budget is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Level {
    #[default]
    Under,
    Approaching,
    At,
    Over,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Under => "under",
            Level::Approaching => "approaching",
            Level::At => "at",
            Level::Over => "over",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_start_and_end_on_calendar_boundaries() {
        // 2026-11-22 (a Sunday) 13:00 UTC.
        let now = days_from_civil(2026, 11, 22) as u64 * DAY_MS + 13 * 3_600_000;
        assert_eq!(civil_from_days((Period::Day.start(now) / DAY_MS) as i64), (2026, 11, 22));
        assert_eq!(civil_from_days((Period::Week.start(now) / DAY_MS) as i64), (2026, 11, 16));
        let month = Period::Month.start(now);
        assert_eq!(civil_from_days((month / DAY_MS) as i64), (2026, 11, 1));
        let next = Period::Month.end(month).unwrap();
        assert_eq!(civil_from_days((next / DAY_MS) as i64), (2026, 12, 1));
        let dec = Period::Month.end(next).unwrap();
        assert_eq!(civil_from_days((dec / DAY_MS) as i64), (2027, 1, 1));
        assert_eq!(Period::Total.end(0), None);
    }
}
