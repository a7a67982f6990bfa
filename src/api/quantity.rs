//! Kubernetes resource quantities (`500m`, `2`, `128Mi`, `1G`, `1e3`) as Miniku's integers:
//! cpu in millicores, memory in bytes. Owns only parsing and formatting; what a quantity is
//! for is the caller's business.

/// Why a quantity was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a quantity (like 500m, 2, 128Mi or 1G)")]
pub struct QuantityError(pub String);

/// The value of `s` times `scale` (1000 for millicores, 1 for bytes), rounded up as
/// Kubernetes rounds requests.
fn parse_scaled(s: &str, scale: f64) -> Result<u64, QuantityError> {
    let err = || QuantityError(s.to_string());
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(t.len());
    let (number, suffix) = t.split_at(split);
    if number.is_empty() {
        return Err(err());
    }
    let n: f64 = number.parse().map_err(|_| err())?;
    let factor: f64 = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        e if e.starts_with(['e', 'E']) => {
            let exp: i32 = e[1..].parse().map_err(|_| err())?;
            10f64.powi(exp)
        }
        _ => return Err(err()),
    };
    let v = n * factor * scale;
    if !v.is_finite() || v < 0.0 || v > u64::MAX as f64 {
        return Err(err());
    }
    Ok(v.ceil() as u64)
}

/// A cpu quantity in millicores: `500m` → 500, `2` → 2000, `0.1` → 100.
pub fn parse_cpu_millis(s: &str) -> Result<u64, QuantityError> {
    parse_scaled(s, 1000.0)
}

/// A memory quantity in bytes: `128Mi` → 134217728, `1G` → 10⁹.
pub fn parse_bytes(s: &str) -> Result<u64, QuantityError> {
    parse_scaled(s, 1.0)
}

/// Millicores as Kubernetes writes them: whole cores as `2`, the rest as `1500m`.
pub fn format_cpu_millis(m: u64) -> String {
    if m.is_multiple_of(1000) {
        (m / 1000).to_string()
    } else {
        format!("{m}m")
    }
}

/// Bytes as Kubernetes' kubelet reports memory: `8388608Ki` when a whole number of KiB.
pub fn format_bytes(b: u64) -> String {
    for (unit, size) in [("Gi", 1u64 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)] {
        if b >= size && b.is_multiple_of(size) {
            return format!("{}{unit}", b / size);
        }
    }
    b.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_and_memory_quantities_parse_as_kubernetes_writes_them() {
        assert_eq!(parse_cpu_millis("500m"), Ok(500));
        assert_eq!(parse_cpu_millis("2"), Ok(2000));
        assert_eq!(parse_cpu_millis("0.1"), Ok(100));
        assert_eq!(parse_bytes("128Mi"), Ok(128 << 20));
        assert_eq!(parse_bytes("1G"), Ok(1_000_000_000));
        assert_eq!(parse_bytes("1e3"), Ok(1000));
        assert_eq!(parse_bytes("8388608Ki"), Ok(8 << 30));
        assert!(parse_bytes("12 apples").is_err());
        assert!(parse_bytes("-1").is_err());
        assert!(parse_cpu_millis("").is_err());
    }

    #[test]
    fn formatting_round_trips() {
        for m in [0, 1, 500, 1000, 1500, 4000] {
            assert_eq!(parse_cpu_millis(&format_cpu_millis(m)), Ok(m));
        }
        for b in [0, 1, 1024, 3 << 20, 8 << 30, 1_000_000_007] {
            assert_eq!(parse_bytes(&format_bytes(b)), Ok(b));
        }
        assert_eq!(format_bytes(8 << 30), "8Gi");
        assert_eq!(format_cpu_millis(250), "250m");
    }
}
