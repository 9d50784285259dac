//! A server-sent events reader: `(event, data)` pairs from a stream, as the
//! console's EventSource would see them.

use futures::StreamExt;
use serde_json::Value;
use std::time::Duration;
use tokio::sync::mpsc;

pub struct Sse {
    rx: mpsc::UnboundedReceiver<(String, Value)>,
}

impl Sse {
    /// Opens `url` (with the token as `?access_token=`, as browsers do).
    pub async fn open(client: &reqwest::Client, url: &str) -> Sse {
        let resp = client.get(url).send().await.expect("stream request");
        assert_eq!(resp.status().as_u16(), 200, "stream {url} refused");
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut body = resp.bytes_stream();
            let mut buf = String::new();
            while let Some(Ok(chunk)) = body.next().await {
                buf.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buf.find("\n\n") {
                    let block: String = buf.drain(..end + 2).collect();
                    let mut event = "message".to_owned();
                    let mut data = String::new();
                    for line in block.lines() {
                        if let Some(e) = line.strip_prefix("event:") {
                            event = e.trim().to_owned();
                        } else if let Some(d) = line.strip_prefix("data:") {
                            data.push_str(d.trim_start());
                        }
                    }
                    if data.is_empty() {
                        continue;
                    }
                    let v = serde_json::from_str(&data).unwrap_or(Value::String(data));
                    if tx.send((event, v)).is_err() {
                        return;
                    }
                }
            }
        });
        Sse { rx }
    }

    /// The next event named `name` (others are skipped), within `wait`.
    pub async fn next(&mut self, name: &str, wait: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let got = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .unwrap_or_else(|_| panic!("no `{name}` event within {wait:?}"))
                .unwrap_or_else(|| panic!("the stream ended before a `{name}` event"));
            if got.0 == name {
                return got.1;
            }
        }
    }
}
