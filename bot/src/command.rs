//! The commands the bot understands in a message, and its answers.

use crate::quotes::{QuoteError, Quotes};

/// Longest stock code looked at.
const MAX_CODE_CHARS: usize = 20;

/// A command found in a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `/stock=CODE` (any case), with the code in capitals.
    Stock(String),
    /// `/stock=` with something that cannot be a code.
    BadCode,
    /// `/help`.
    Help,
}

/// The command a message's text holds (the whole text, trimmed); `None` for everything else.
pub fn parse(text: &str) -> Option<Command> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("/help") {
        return Some(Command::Help);
    }
    let prefix = text.get(..7)?;
    if !prefix.eq_ignore_ascii_case("/stock=") {
        return None;
    }
    let code = text[7..].trim();
    let valid = !code.is_empty()
        && code.chars().count() <= MAX_CODE_CHARS
        && code
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '^'));
    Some(if valid {
        Command::Stock(code.to_ascii_uppercase())
    } else {
        Command::BadCode
    })
}

/// The help text.
pub const HELP: &str = "Commands: /stock=CODE gives the latest price of a stock (for example \
/stock=AAPL.US); /help shows this list.";

/// The bot's answer to `command`.
pub async fn answer(command: &Command, quotes: &Quotes) -> String {
    match command {
        Command::Help => HELP.to_owned(),
        Command::BadCode => {
            "That is not a stock code. Try /stock=AAPL.US (letters, digits, '.', '-').".to_owned()
        }
        Command::Stock(code) => match quotes.price(code).await {
            Ok(price) => format!("{code} quote is ${price:.2} per share"),
            Err(QuoteError::Unknown(_)) => {
                format!("No quote for {code}: unknown stock code. Try /stock=AAPL.US")
            }
            Err(QuoteError::Unavailable(why)) => {
                tracing::warn!(code = %code, reason = %why, "quote service unavailable");
                format!("Sorry, the quote service is unavailable right now; no quote for {code}.")
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_case_insensitive() {
        assert_eq!(
            parse("/stock=aapl.us"),
            Some(Command::Stock("AAPL.US".into()))
        );
        assert_eq!(
            parse(" /STOCK=Msft.US "),
            Some(Command::Stock("MSFT.US".into()))
        );
        assert_eq!(parse("/Help"), Some(Command::Help));
        assert_eq!(parse("/stock="), Some(Command::BadCode));
        assert_eq!(parse("/stock=a b"), Some(Command::BadCode));
        assert_eq!(parse("hello /stock=aapl.us"), None);
        assert_eq!(parse("/stocks"), None);
        assert_eq!(parse("é"), None);
    }

    #[tokio::test]
    async fn answers_in_the_seed_format() {
        let quotes = Quotes::from_csv(crate::quotes::SAMPLE_CSV).unwrap();
        assert_eq!(
            answer(&Command::Stock("AAPL.US".into()), &quotes).await,
            "AAPL.US quote is $93.42 per share"
        );
        let unknown = answer(&Command::Stock("ZZZZ.US".into()), &quotes).await;
        assert!(unknown.contains("No quote for ZZZZ.US") && !unknown.contains('$'));
        assert!(
            answer(&Command::Help, &quotes)
                .await
                .contains("/stock=CODE")
        );
    }
}
