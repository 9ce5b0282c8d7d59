//! [`Endpoints`]: several equivalent URLs of one service (scheduler replicas), tried in turn.
//!
//! `BERTH_SCHEDULER_URL` is a comma-separated list. A caller tries the endpoint that answered
//! last first, then the others in the order given, and moves on when one fails (no connection,
//! a timeout, a 5xx answer: each client decides, since only it knows which calls are safe to
//! repeat). Remembering the last good one keeps a dead replica from costing every call a try.

use std::sync::atomic::{AtomicUsize, Ordering};

/// The URLs of one service, the last one that answered first.
#[derive(Debug)]
pub struct Endpoints {
    urls: Vec<String>,
    preferred: AtomicUsize,
}

impl Endpoints {
    /// Parses a comma-separated list of `http://` or `https://` URLs (blanks and trailing
    /// slashes dropped). Fails on an empty list or another scheme, naming the offender.
    pub fn parse(list: &str) -> Result<Endpoints, String> {
        let urls: Vec<String> = list
            .split(',')
            .map(|u| u.trim().trim_end_matches('/'))
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
            .collect();
        if urls.is_empty() {
            return Err("no URL given".into());
        }
        if let Some(bad) = urls
            .iter()
            .find(|u| !u.starts_with("http://") && !u.starts_with("https://"))
        {
            return Err(format!("{bad:?} is not an http:// or https:// URL"));
        }
        Ok(Endpoints {
            urls,
            preferred: AtomicUsize::new(0),
        })
    }

    /// The order to try them in this time: `(index, url)`, the last good one first.
    pub fn order(&self) -> impl Iterator<Item = (usize, &str)> {
        let first = self.preferred.load(Ordering::Relaxed) % self.urls.len();
        (0..self.urls.len())
            .map(move |k| (first + k) % self.urls.len())
            .map(|i| (i, self.urls[i].as_str()))
    }

    /// Records that endpoint `index` answered: the next call tries it first.
    pub fn answered(&self, index: usize) {
        self.preferred.store(index, Ordering::Relaxed);
    }

    /// Every URL, in the order given.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_and_the_last_good_one_comes_first() {
        let e = Endpoints::parse(" http://a:1/, https://b:2 ,,http://c").unwrap();
        assert_eq!(e.urls(), ["http://a:1", "https://b:2", "http://c"]);
        let order = |e: &Endpoints| e.order().map(|(_, u)| u.to_owned()).collect::<Vec<_>>();
        assert_eq!(order(&e), ["http://a:1", "https://b:2", "http://c"]);
        e.answered(2);
        assert_eq!(order(&e), ["http://c", "http://a:1", "https://b:2"]);
        assert!(Endpoints::parse("").is_err());
        assert!(Endpoints::parse("ws://a").unwrap_err().contains("ws://a"));
        assert_eq!(Endpoints::parse("http://one").unwrap().urls().len(), 1);
    }
}
