//! RTMP pull sources: the `rtmp://` dialer the RTMP adapter gives the cluster's pulls (an edge in front of
//! nginx-rtmp or another RTMP server), on the adapter's own client.

use std::time::Duration;

use super::client::{RtmpClient, RtmpUrl};
use crate::cluster::pull::{Dialer, SourceFailure, SourceTag, TagSource};

/// Opens `rtmp://host[:port]/app/stream` sources.
pub struct RtmpDialer;

#[async_trait::async_trait]
impl Dialer for RtmpDialer {
    fn accepts(&self, url: &str) -> bool {
        RtmpUrl::parse(url).is_ok()
    }

    async fn open(&self, url: &str, timeout: Duration) -> Result<Box<dyn TagSource>, SourceFailure> {
        let u = RtmpUrl::parse(url).map_err(|e| SourceFailure(e.to_string()))?;
        let mut c = RtmpClient::connect(&u, timeout).await.map_err(|e| SourceFailure(e.to_string()))?;
        c.play(&u).await.map_err(|e| SourceFailure(e.to_string()))?;
        Ok(Box::new(RtmpSource(c)))
    }
}

struct RtmpSource(RtmpClient);

#[async_trait::async_trait]
impl TagSource for RtmpSource {
    async fn next(&mut self) -> Result<Option<SourceTag>, SourceFailure> {
        match self.0.next_media().await {
            Ok(Some(m)) => Ok(Some((m.type_id, m.timestamp, m.payload))),
            Ok(None) => Ok(None),
            Err(e) => Err(SourceFailure(e.to_string())),
        }
    }
}
