//! The two refusals the reference master makes before it looks at what an instance URL
//! means, in its order: Go's `url.Parse` failing (control characters, spaces, a leading
//! `:`, i.e. a missing scheme) and a scheme other than `client`/`server` (also for text
//! with no scheme at all, which Go parses as a path). The master answers them with the
//! reference's exact texts; the grammar proper is [`crate::url`].

/// Why the reference would refuse an instance URL before parsing its meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoUrlRefusal {
    /// Go's `url.Parse` fails: `Invalid URL format`.
    Unparsable,
    /// The scheme is not `client` or `server`: `Invalid URL scheme`.
    Scheme,
}

/// Applies the reference's two early checks to an instance URL.
pub fn check_instance_url(raw: &str) -> Result<(), GoUrlRefusal> {
    let unparsable = raw.starts_with(':') || raw.chars().any(|c| c.is_control() || c == ' ');
    if unparsable {
        return Err(GoUrlRefusal::Unparsable);
    }
    let scheme = match raw.split_once(':') {
        Some((s, _))
            if s.starts_with(|c: char| c.is_ascii_alphabetic())
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')) =>
        {
            s.to_ascii_lowercase()
        }
        _ => String::new(),
    };
    if scheme != "client" && scheme != "server" {
        return Err(GoUrlRefusal::Scheme);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_in_the_references_order() {
        assert_eq!(
            check_instance_url("::not a url"),
            Err(GoUrlRefusal::Unparsable)
        );
        assert_eq!(
            check_instance_url("client://a b/c:1"),
            Err(GoUrlRefusal::Unparsable)
        );
        assert_eq!(
            check_instance_url("http://1.2.3.4:1/x"),
            Err(GoUrlRefusal::Scheme)
        );
        // Without a scheme Go parses the text as a path; the scheme check refuses it.
        assert_eq!(check_instance_url("server//x"), Err(GoUrlRefusal::Scheme));
        assert_eq!(check_instance_url("SERVER://:1/x:2"), Ok(()));
        assert_eq!(check_instance_url("client://x:1/y:2"), Ok(()));
    }
}
