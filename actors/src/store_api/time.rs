//! Times as both engines store them.

use super::StoreError;

/// A time as stored: milliseconds since the Unix epoch.
pub fn ms(t: chrono::DateTime<chrono::Utc>) -> i64 {
    t.timestamp_millis()
}

/// A stored time back; a value out of range means the row is corrupt.
pub fn time(ms: i64) -> Result<chrono::DateTime<chrono::Utc>, StoreError> {
    use chrono::TimeZone;
    chrono::Utc
        .timestamp_millis_opt(ms)
        .single()
        .ok_or_else(|| StoreError::Corrupt(format!("time {ms} out of range")))
}

/// [`time`] of a nullable column.
pub fn opt_time(ms: Option<i64>) -> Result<Option<chrono::DateTime<chrono::Utc>>, StoreError> {
    ms.map(time).transpose()
}
