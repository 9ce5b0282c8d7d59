//! [`PublicUrl`]: the template of the WebSocket URL a session server advertises when a proxy
//! fronts the fleet (`BERTH_SESSION_PUBLIC_URL`, e.g. `wss://rooms.example.com/{serverId}/ws`).

/// The placeholders a template may use.
const PLACEHOLDERS: [&str; 3] = ["{serverId}", "{host}", "{port}"];

/// A checked URL template with `{serverId}`, `{host}` and `{port}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicUrl(String);

impl std::str::FromStr for PublicUrl {
    type Err = String;

    /// Accepts a `ws://` or `wss://` URL ending in `/ws` whose only braces are the known
    /// placeholders, and which still parses as a URL once they are filled in.
    fn from_str(template: &str) -> Result<Self, String> {
        let template = template.trim();
        let sample = PublicUrl(template.to_owned()).fill("s-abc123", "host.example", 9000);
        if sample.contains(['{', '}']) {
            return Err(format!(
                "{template}: unknown placeholder (use {{serverId}}, {{host}}, {{port}})"
            ));
        }
        let url = url::Url::parse(&sample).map_err(|e| format!("{template}: not a URL ({e})"))?;
        if !matches!(url.scheme(), "ws" | "wss") {
            return Err(format!("{template}: must be a ws:// or wss:// URL"));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(format!("{template}: has no host"));
        }
        // The SSE stream and the backend's sends sit beside the WebSocket (`…/sse`,
        // `…/internal/…`): they are found by replacing the final `/ws`.
        if !url.path().ends_with("/ws") || url.query().is_some() || url.fragment().is_some() {
            return Err(format!(
                "{template}: must end in /ws, with no query or fragment"
            ));
        }
        Ok(PublicUrl(template.to_owned()))
    }
}

impl PublicUrl {
    /// The URL of the server `server_id` listening on `host:port`.
    pub fn fill(&self, server_id: &str, host: &str, port: u16) -> String {
        self.0
            .replace("{serverId}", server_id)
            .replace("{host}", host)
            .replace("{port}", &port.to_string())
    }

    /// Whether the URL names the server, so that the server must know its id before it
    /// registers.
    pub fn needs_server_id(&self) -> bool {
        self.0.contains(PLACEHOLDERS[0])
    }

    /// The template as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_every_placeholder() {
        let t: PublicUrl = "wss://rooms.example.com/{serverId}/ws".parse().unwrap();
        assert!(t.needs_server_id());
        assert_eq!(
            t.fill("s-1", "10.0.0.5", 9000),
            "wss://rooms.example.com/s-1/ws"
        );
        let t: PublicUrl = "wss://{host}-{port}.example.com/{serverId}/ws"
            .parse()
            .unwrap();
        assert_eq!(
            t.fill("s-1", "10-0-0-5", 9000),
            "wss://10-0-0-5-9000.example.com/s-1/ws"
        );
        let t: PublicUrl = "wss://{host}:{port}/ws".parse().unwrap();
        assert!(!t.needs_server_id());
    }

    #[test]
    fn refuses_what_cannot_work() {
        for bad in [
            "https://rooms.example.com/{serverId}/ws",
            "wss://rooms.example.com/{server}/ws",
            "rooms.example.com/{serverId}/ws",
            "wss://rooms.example.com/ws#{serverId}",
            "wss://rooms.example.com/ws?via={serverId}",
            "wss://rooms.example.com/{serverId}",
            "",
        ] {
            assert!(bad.parse::<PublicUrl>().is_err(), "{bad}");
        }
    }
}
