//! Memory pressure: the level the engine works at, from the memory its pointers and hot
//! versions cost against a budget, with hysteresis so the level does not flap.
//!
//! - **low**: full retention;
//! - **high** (from 80 % of the budget, back below 70 %): retention shrinks to nothing, so
//!   the watermark moves up to the oldest active transaction or pin, and every pointer keeps
//!   only its latest version in memory (older ones are read from cold storage);
//! - **critical** (from 95 %, back below 85 %): as high, and new read-write transactions are
//!   refused (`503` with `Retry-After`) until memory is back; reads, read-only transactions
//!   and deletes still go through, so a client can free space, the way etcd's space quota
//!   leaves deletes and compaction open.

/// A pressure level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Pressure {
    Low = 0,
    High = 1,
    Critical = 2,
}

impl Pressure {
    pub fn as_str(self) -> &'static str {
        match self {
            Pressure::Low => "low",
            Pressure::High => "high",
            Pressure::Critical => "critical",
        }
    }

    pub fn from_u8(v: u8) -> Pressure {
        match v {
            0 => Pressure::Low,
            1 => Pressure::High,
            _ => Pressure::Critical,
        }
    }

    /// The level after measuring `used` of `budget` bytes at level `self`.
    pub fn next(self, used: u64, budget: u64) -> Pressure {
        if budget == 0 {
            return Pressure::Low;
        }
        let r = used as f64 / budget as f64;
        match self {
            Pressure::Low if r >= 0.95 => Pressure::Critical,
            Pressure::Low if r >= 0.80 => Pressure::High,
            Pressure::Low => Pressure::Low,
            Pressure::High if r >= 0.95 => Pressure::Critical,
            Pressure::High if r < 0.70 => Pressure::Low,
            Pressure::High => Pressure::High,
            Pressure::Critical if r < 0.70 => Pressure::Low,
            Pressure::Critical if r < 0.85 => Pressure::High,
            Pressure::Critical => Pressure::Critical,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Pressure::*;

    #[test]
    fn levels_rise_and_fall_with_hysteresis() {
        assert_eq!(Low.next(79, 100), Low);
        assert_eq!(Low.next(80, 100), High);
        assert_eq!(Low.next(95, 100), Critical);
        assert_eq!(High.next(75, 100), High, "no flapping between 70 and 80");
        assert_eq!(High.next(69, 100), Low);
        assert_eq!(Critical.next(90, 100), Critical);
        assert_eq!(Critical.next(84, 100), High);
        assert_eq!(Critical.next(10, 100), Low);
        assert_eq!(Critical.next(10, 0), Low, "no budget, no pressure");
    }
}
