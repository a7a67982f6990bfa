//! Kubernetes' `PodLogOptions` as a query string (`GET .../pods/NAME/log?follow=true&...`):
//! parsed and checked once, with Kubernetes' rules and words, by the API server (which then
//! passes it on) and by the kubelet (which applies it). No I/O.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

/// Which part of a container's output to read, as the engine applies it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// Keep the stream open and send lines as they are written, until the container ends.
    pub follow: bool,
    /// The last this many lines only.
    pub tail_lines: Option<u64>,
    /// Lines written at or after this time only.
    pub since: Option<DateTime<Utc>>,
    /// Prefix each line with its RFC 3339 time (nanoseconds).
    pub timestamps: bool,
    /// The container that ran before the current one (after a restart), not the current one.
    pub previous: bool,
}

/// A log request's query, checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogQuery {
    /// `container`: which of the pod's containers (may be left out when it has one).
    pub container: Option<String>,
    pub follow: bool,
    pub previous: bool,
    pub timestamps: bool,
    pub tail_lines: Option<u64>,
    pub since_seconds: Option<u64>,
    pub since_time: Option<DateTime<Utc>>,
    /// Stop after this many bytes (the last line may be cut).
    pub limit_bytes: Option<u64>,
}

/// Why a log query is refused, in Kubernetes' field words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogQueryError {
    /// A value the field does not take (`value` as Kubernetes prints it: numbers bare,
    /// text quoted).
    #[error("{field}: Invalid value: {value}: {reason}")]
    Invalid {
        field: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error(
        "sinceSeconds: Forbidden: at most one of `sinceTime` or `sinceSeconds` may be specified"
    )]
    BothSince,
}

fn invalid(field: &'static str, value: String, reason: &'static str) -> LogQueryError {
    LogQueryError::Invalid {
        field,
        value,
        reason,
    }
}

/// Go's `strconv.ParseBool`, which Kubernetes' query decoding uses.
fn parse_bool(name: &'static str, v: &str) -> Result<bool, LogQueryError> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        other => Err(invalid(name, format!("{other:?}"), "not a boolean")),
    }
}

fn parse_int(name: &'static str, v: &str) -> Result<i64, LogQueryError> {
    v.parse::<i64>()
        .map_err(|_| invalid(name, format!("{v:?}"), "not an integer"))
}

impl LogQuery {
    /// Parses and checks the query parameters (others, such as kubectl's
    /// `insecureSkipTLSVerifyBackend`, are ignored). The error is Kubernetes' field message.
    pub fn parse(q: &HashMap<String, String>) -> Result<LogQuery, LogQueryError> {
        let flag = |name: &'static str| {
            q.get(name)
                .map(|v| parse_bool(name, v))
                .transpose()
                .map(|b| b.unwrap_or(false))
        };
        let int = |name: &'static str| q.get(name).map(|v| parse_int(name, v)).transpose();
        let at_least = |name: &'static str, min: i64, reason: &'static str| {
            int(name)?
                .map(|n| {
                    if n < min {
                        Err(invalid(name, n.to_string(), reason))
                    } else {
                        Ok(n as u64)
                    }
                })
                .transpose()
        };
        let tail_lines = at_least("tailLines", 0, "must be greater than or equal to 0")?;
        let limit_bytes = at_least("limitBytes", 1, "must be greater than 0")?;
        let since_seconds = at_least("sinceSeconds", 1, "must be greater than 0")?;
        let since_time = q
            .get("sinceTime")
            .map(|v| {
                DateTime::parse_from_rfc3339(v)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|_| invalid("sinceTime", format!("{v:?}"), "not an RFC 3339 time"))
            })
            .transpose()?;
        if since_seconds.is_some() && since_time.is_some() {
            return Err(LogQueryError::BothSince);
        }
        Ok(LogQuery {
            container: q.get("container").filter(|c| !c.is_empty()).cloned(),
            follow: flag("follow")?,
            previous: flag("previous")?,
            timestamps: flag("timestamps")?,
            tail_lines,
            since_seconds,
            since_time,
            limit_bytes,
        })
    }

    /// The query string that carries these options on (without `container`, which the
    /// kubelet's path names).
    pub fn to_query(&self) -> String {
        let mut parts = Vec::new();
        for (name, on) in [
            ("follow", self.follow),
            ("previous", self.previous),
            ("timestamps", self.timestamps),
        ] {
            if on {
                parts.push(format!("{name}=true"));
            }
        }
        for (name, v) in [
            ("tailLines", self.tail_lines),
            ("sinceSeconds", self.since_seconds),
            ("limitBytes", self.limit_bytes),
        ] {
            if let Some(v) = v {
                parts.push(format!("{name}={v}"));
            }
        }
        if let Some(t) = self.since_time {
            parts.push(format!(
                "sinceTime={}",
                t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ));
        }
        parts.join("&")
    }

    /// What the engine is asked for, at `now`.
    pub fn engine_options(&self, now: DateTime<Utc>) -> LogOptions {
        let since = self.since_time.or_else(|| {
            self.since_seconds
                .map(|s| now - chrono::Duration::seconds(s.min(i64::MAX as u64 / 2000) as i64))
        });
        LogOptions {
            follow: self.follow,
            tail_lines: self.tail_lines,
            since,
            timestamps: self.timestamps,
            previous: self.previous,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn options_parse_and_travel_unchanged() {
        let parsed = LogQuery::parse(&q(&[
            ("container", "web"),
            ("follow", "true"),
            ("tailLines", "3"),
            ("limitBytes", "100"),
            ("sinceSeconds", "60"),
            ("timestamps", "1"),
            ("insecureSkipTLSVerifyBackend", "true"),
        ]))
        .expect("valid");
        assert_eq!(parsed.container.as_deref(), Some("web"));
        assert!(parsed.follow && parsed.timestamps && !parsed.previous);
        let query = parsed.to_query();
        assert_eq!(
            query,
            "follow=true&timestamps=true&tailLines=3&sinceSeconds=60&limitBytes=100"
        );
        let again: HashMap<String, String> = query
            .split('&')
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let back = LogQuery::parse(&again).expect("valid");
        assert_eq!(
            back,
            LogQuery {
                container: None,
                ..parsed
            }
        );
        let now = Utc::now();
        assert_eq!(
            back.engine_options(now).since,
            Some(now - chrono::Duration::seconds(60))
        );
    }

    #[test]
    fn kubernetes_refusals() {
        let err = |pairs: &[(&str, &str)]| {
            LogQuery::parse(&q(pairs))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert_eq!(
            err(&[("tailLines", "-1")]),
            "tailLines: Invalid value: -1: must be greater than or equal to 0"
        );
        assert_eq!(
            err(&[("limitBytes", "0")]),
            "limitBytes: Invalid value: 0: must be greater than 0"
        );
        assert!(
            err(&[("sinceSeconds", "5"), ("sinceTime", "2025-01-01T00:00:00Z")])
                .contains("at most one of")
        );
        assert!(err(&[("follow", "yes")]).contains("not a boolean"));
        assert!(LogQuery::parse(&q(&[("tailLines", "0")])).is_ok());
    }
}
