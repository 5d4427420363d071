//! Herald's vocabulary as types: what a delivery's status and channel can be, and what
//! a notification's status is made of. Stored as `text` in PostgreSQL (the
//! migrations' CHECK constraints list the same words); [`text_enum!`] maps each enum
//! to and from that text, so no module compares status or channel strings.

use serde::{Deserialize, Serialize};

/// Implements `as_str`, `FromStr`, `Display` and the sqlx text mapping for a fieldless
/// enum whose variants are stored as the given words.
macro_rules! text_enum {
    ($ty:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $ty {
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $text),+ }
            }
        }

        impl std::str::FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($ty::$variant),)+
                    other => Err(format!(
                        "'{other}' is not one of {}",
                        [$($text),+].join(", ")
                    )),
                }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl sqlx::Type<sqlx::Postgres> for $ty {
            fn type_info() -> sqlx::postgres::PgTypeInfo {
                <&str as sqlx::Type<sqlx::Postgres>>::type_info()
            }
            fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
                <&str as sqlx::Type<sqlx::Postgres>>::compatible(ty)
            }
        }

        impl sqlx::postgres::PgHasArrayType for $ty {
            fn array_type_info() -> sqlx::postgres::PgTypeInfo {
                <&str as sqlx::postgres::PgHasArrayType>::array_type_info()
            }
        }

        impl<'r> sqlx::Decode<'r, sqlx::Postgres> for $ty {
            fn decode(value: sqlx::postgres::PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
                let s = <&str as sqlx::Decode<sqlx::Postgres>>::decode(value)?;
                Ok(s.parse::<$ty>()?)
            }
        }

        impl sqlx::Encode<'_, sqlx::Postgres> for $ty {
            fn encode_by_ref(
                &self,
                buf: &mut sqlx::postgres::PgArgumentBuffer,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&str as sqlx::Encode<sqlx::Postgres>>::encode(self.as_str(), buf)
            }
        }
    };
}

pub(crate) use text_enum;

/// How a delivery reaches its target.
///
/// A delivery's bus ordering key has one definition, the SQL function
/// `herald_ordering_key(channel, target)`: every statement that enqueues a delivery's
/// message (accepting, resending, sweeping) computes the key with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Email,
    Webhook,
}
text_enum!(Channel { Email => "email", Webhook => "webhook" });

/// Where a delivery stands. `Pending`, `InFlight` and `Retrying` are open; the others
/// are terminal until a resend opens a new round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    Pending,
    InFlight,
    Retrying,
    Succeeded,
    Failed,
    Cancelled,
    /// An email accepted by the relay that came back: a permanent (5.x.x) bounce.
    Bounced,
    /// An email its recipient reported as spam (an ARF report or a relay's complaint).
    Complained,
    /// An email never sent: its address is on the suppression list.
    Suppressed,
}
text_enum!(DeliveryStatus {
    Pending => "pending",
    InFlight => "in_flight",
    Retrying => "retrying",
    Succeeded => "succeeded",
    Failed => "failed",
    Cancelled => "cancelled",
    Bounced => "bounced",
    Complained => "complained",
    Suppressed => "suppressed",
});

impl DeliveryStatus {
    pub fn is_open(self) -> bool {
        matches!(self, DeliveryStatus::Pending | DeliveryStatus::InFlight | DeliveryStatus::Retrying)
    }
}

/// A notification's status, derived from its deliveries' ([`NotificationStatus::of`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NotificationStatus {
    #[default]
    NoDeliveries,
    Pending,
    InProgress,
    Succeeded,
    Failed,
    PartiallyFailed,
    Cancelled,
}

impl NotificationStatus {
    pub fn of(statuses: impl IntoIterator<Item = DeliveryStatus>) -> Self {
        use DeliveryStatus as D;
        let (mut total, mut pending, mut open, mut ok, mut failed) = (0, 0, 0, 0, 0);
        for s in statuses {
            total += 1;
            match s {
                D::Pending => pending += 1,
                D::InFlight | D::Retrying => open += 1,
                // A complaint is about an email that arrived.
                D::Succeeded | D::Complained => ok += 1,
                D::Failed | D::Bounced => failed += 1,
                // Nothing was sent, on purpose.
                D::Cancelled | D::Suppressed => {}
            }
        }
        match () {
            _ if total == 0 => Self::NoDeliveries,
            _ if pending == total => Self::Pending,
            _ if pending + open > 0 => Self::InProgress,
            _ if failed == 0 && ok > 0 => Self::Succeeded,
            _ if ok == 0 && failed > 0 => Self::Failed,
            _ if ok > 0 => Self::PartiallyFailed,
            _ => Self::Cancelled,
        }
    }
}

/// A time as people and forms give it: RFC 3339, or a browser's `datetime-local` value
/// (no zone, read as UTC). Empty is none; anything else is an error naming `name`.
pub fn parse_time(name: &str, v: &str) -> Result<Option<chrono::DateTime<chrono::Utc>>, crate::error::Error> {
    let v = v.trim();
    if v.is_empty() {
        return Ok(None);
    }
    chrono::DateTime::parse_from_rfc3339(v)
        .map(|t| t.with_timezone(&chrono::Utc))
        .or_else(|_| chrono::NaiveDateTime::parse_from_str(v, "%Y-%m-%dT%H:%M").map(|t| t.and_utc()))
        .map(Some)
        .map_err(|_| {
            crate::error::Error::Invalid(format!("{name} must be an RFC 3339 time, such as 2026-11-29T12:00:00Z"))
        })
}

/// The smallest UUIDv7 of `t`'s millisecond. Notifications, deliveries (and so
/// attempts) have UUIDv7 ids, so a time range is an id range that their primary keys
/// serve (history, dashboard, retention). Times past UUIDv7's 48-bit range are clamped
/// to it, never wrapped; a time before 1970 is the nil id, below every id.
pub fn v7_floor(t: chrono::DateTime<chrono::Utc>) -> uuid::Uuid {
    let ms = t.timestamp_millis();
    if ms < 0 {
        return uuid::Uuid::nil();
    }
    uuid::Builder::from_unix_timestamp_millis(ms.min((1i64 << 48) - 1) as u64, &[0; 10]).into_uuid()
}

/// The line diff of two texts: `('-', line)` only in `old`, `('+', line)` only in `new`,
/// `(' ', line)` in both (template versions, audit entries' before and after).
pub fn line_diff(old: &str, new: &str) -> Vec<(char, String)> {
    similar::TextDiff::from_lines(old, new)
        .iter_all_changes()
        .map(|c| {
            let tag = match c.tag() {
                similar::ChangeTag::Delete => '-',
                similar::ChangeTag::Insert => '+',
                similar::ChangeTag::Equal => ' ',
            };
            (tag, c.value().trim_end_matches(['\r', '\n']).to_owned())
        })
        .collect()
}

/// Follows a dotted path (`user.email`) into a JSON value: how routing finds a
/// notification's recipient, and how the catalog checks a recipient path.
pub fn lookup<'a>(v: &'a serde_json::Value, path: &str) -> Option<&'a serde_json::Value> {
    path.split('.').try_fold(v, |cur, seg| cur.get(seg))
}

/// For PATCH bodies: an absent field stays `None`, `null` becomes `Some(None)`.
pub(crate) fn nullable<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_derivation() {
        use DeliveryStatus as D;
        use NotificationStatus as N;
        assert_eq!(N::of([D::Pending, D::Pending]), N::Pending);
        assert_eq!(N::of([D::Pending, D::Succeeded]), N::InProgress);
        assert_eq!(N::of([D::Retrying]), N::InProgress);
        assert_eq!(N::of([D::Succeeded, D::Succeeded]), N::Succeeded);
        assert_eq!(N::of([D::Failed]), N::Failed);
        assert_eq!(N::of([D::Failed, D::Succeeded]), N::PartiallyFailed);
        assert_eq!(N::of([]), N::NoDeliveries);
        assert_eq!(N::of([D::Cancelled]), N::Cancelled);
        assert_eq!(N::of([D::Bounced]), N::Failed);
        assert_eq!(N::of([D::Bounced, D::Complained]), N::PartiallyFailed);
        assert_eq!(N::of([D::Suppressed]), N::Cancelled);
        assert_eq!(N::of([D::Suppressed, D::Succeeded]), N::Succeeded);
    }

    #[test]
    fn words_round_trip() {
        for s in DeliveryStatus::ALL {
            assert_eq!(s.as_str().parse::<DeliveryStatus>().unwrap(), *s);
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        for c in Channel::ALL {
            assert_eq!(c.as_str().parse::<Channel>().unwrap(), *c);
        }
        assert!("done".parse::<DeliveryStatus>().is_err());
    }
}
