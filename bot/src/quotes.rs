//! Where prices come from: a stooq-format CSV file (the sample shipped with the bot, or
//! `--quotes-file`), or a stooq-style HTTP endpoint (`--quotes-url`).
//!
//! The CSV has the header `Symbol,Date,Time,Open,High,Low,Close,Volume`; the price is `Close`.
//! stooq answers an unknown symbol with `N/D` in the price columns.

use std::collections::HashMap;
use std::time::Duration;

/// The sample data embedded in the binary (see `bot/data/README.md`: invented prices).
pub const SAMPLE_CSV: &str = include_str!("../data/quotes.csv");

/// Longest answer read from a quote endpoint.
const MAX_ANSWER_BYTES: usize = 16 * 1024;

/// Why a quote could not be given.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QuoteError {
    /// The source has no price for this code.
    #[error("no quote for {0}")]
    Unknown(String),
    /// The quote endpoint failed, timed out or answered something unreadable.
    #[error("quote service unavailable: {0}")]
    Unavailable(String),
}

/// A CSV file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("quotes CSV: {0}")]
pub struct CsvError(String);

/// Prices by symbol (upper case), in dollars.
#[derive(Debug, Clone)]
pub enum Quotes {
    Table(HashMap<String, f64>),
    Endpoint { url: String, http: reqwest::Client },
}

impl Quotes {
    /// The rows of a stooq CSV (rows without a price, `N/D`, are left out).
    pub fn from_csv(csv: &str) -> Result<Quotes, CsvError> {
        let rows = parse_csv(csv)?;
        if rows.is_empty() {
            return Err(CsvError("no row with a price".into()));
        }
        Ok(Quotes::Table(rows.into_iter().collect()))
    }

    /// A stooq-style endpoint: `{url}?s={code}&f=sd2t2ohlcv&h&e=csv` (or with `{code}` in
    /// `url`, replaced), each call bounded by `timeout`.
    pub fn from_url(url: &str, timeout: Duration) -> Result<Quotes, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()?;
        Ok(Quotes::Endpoint {
            url: url.to_owned(),
            http,
        })
    }

    /// The price of `code` (upper case).
    pub async fn price(&self, code: &str) -> Result<f64, QuoteError> {
        match self {
            Quotes::Table(table) => table
                .get(code)
                .copied()
                .ok_or_else(|| QuoteError::Unknown(code.to_owned())),
            Quotes::Endpoint { url, http } => {
                let url = request_url(url, code);
                let answer = http
                    .get(&url)
                    .send()
                    .await
                    .map_err(|e| QuoteError::Unavailable(e.without_url().to_string()))?;
                if !answer.status().is_success() {
                    return Err(QuoteError::Unavailable(format!(
                        "answered {}",
                        answer.status()
                    )));
                }
                let mut body = Vec::new();
                let mut answer = answer;
                while let Some(chunk) = answer
                    .chunk()
                    .await
                    .map_err(|e| QuoteError::Unavailable(e.without_url().to_string()))?
                {
                    body.extend_from_slice(&chunk);
                    if body.len() > MAX_ANSWER_BYTES {
                        return Err(QuoteError::Unavailable("answer too large".into()));
                    }
                }
                let text = String::from_utf8_lossy(&body);
                let rows = parse_csv(&text).map_err(|e| QuoteError::Unavailable(e.to_string()))?;
                rows.into_iter()
                    .find(|(symbol, _)| symbol == code)
                    .map(|(_, price)| price)
                    .ok_or_else(|| QuoteError::Unknown(code.to_owned()))
            }
        }
    }
}

fn request_url(base: &str, code: &str) -> String {
    let code = code.to_ascii_lowercase();
    if base.contains("{code}") {
        return base.replace("{code}", &code);
    }
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}s={code}&f=sd2t2ohlcv&h&e=csv")
}

/// `(SYMBOL, close)` of every row with a price. The header must name `Symbol` and `Close`.
fn parse_csv(csv: &str) -> Result<Vec<(String, f64)>, CsvError> {
    let mut lines = csv.lines().map(str::trim).filter(|l| !l.is_empty());
    let header: Vec<String> = lines
        .next()
        .ok_or_else(|| CsvError("empty".into()))?
        .split(',')
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    let column = |name: &str| {
        header
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| CsvError(format!("no {name} column")))
    };
    let (symbol, close) = (column("symbol")?, column("close")?);
    Ok(lines
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            let price: f64 = fields.get(close)?.parse().ok()?;
            let symbol = fields.get(symbol)?.to_ascii_uppercase();
            (price.is_finite() && price > 0.0).then_some((symbol, price))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_sample_has_aapl_at_the_seed_price() {
        let quotes = Quotes::from_csv(SAMPLE_CSV).unwrap();
        assert_eq!(quotes.price("AAPL.US").await, Ok(93.42));
        let Quotes::Table(table) = &quotes else {
            unreachable!()
        };
        assert!(table.len() >= 30, "a few dozen listings");
        assert_eq!(
            quotes.price("NOPE.US").await,
            Err(QuoteError::Unknown("NOPE.US".into()))
        );
    }

    #[test]
    fn stooq_rows_without_a_price_are_left_out() {
        let csv = "Symbol,Date,Time,Open,High,Low,Close,Volume\r\n\
                   XYZ.US,N/D,N/D,N/D,N/D,N/D,N/D,N/D\r\nabc.us,2026-01-02,22:00:00,1,2,0.5,1.5,10\r\n";
        assert_eq!(parse_csv(csv).unwrap(), vec![("ABC.US".to_owned(), 1.5)]);
        assert!(Quotes::from_csv("Symbol,Close\n").is_err());
        assert!(parse_csv("a,b\n").is_err());
    }

    #[test]
    fn endpoint_urls_follow_stooq() {
        assert_eq!(
            request_url("https://stooq.com/q/l/", "AAPL.US"),
            "https://stooq.com/q/l/?s=aapl.us&f=sd2t2ohlcv&h&e=csv"
        );
        assert_eq!(
            request_url("http://x/q?k=1", "A"),
            "http://x/q?k=1&s=a&f=sd2t2ohlcv&h&e=csv"
        );
        assert_eq!(
            request_url("http://x/{code}.csv", "A.US"),
            "http://x/a.us.csv"
        );
    }
}
