//! HTTPS on `http.https_listen`: the same routes as the HTTP port, over TLS, with HTTP/2 when the client
//! offers it by ALPN (browsers do; `<live-player>` and curl may). HTTP-FLV players over TLS are served by
//! their own task (the direct fan-out writes plaintext to sockets, so it serves only the plain port).

use std::sync::Arc;

use tokio::net::TcpListener;

use super::{serve_hyper, HttpState, HEADER_TIMEOUT};
use crate::netio;
use crate::tls::{TlsCerts, ALPN_H2};

/// Accepts HTTPS connections until `shutdown` fires. Counted against `http.max_connections` with the plain
/// port's.
pub async fn serve(
    listener: TcpListener,
    state: Arc<HttpState>,
    certs: Arc<TlsCerts>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let st = state.clone();
    crate::conn::accept_loop(
        listener,
        state.limits.clone(),
        shutdown,
        crate::conn::Listener::Http,
        move |sock, addr, permit| {
            let state = st.clone();
            // The certificate in use now: a reload applies to connections accepted after it.
            let acceptor = certs.acceptor();
            netio::tune_media_socket(&sock, Some(netio::PLAYER_SEND_BUFFER));
            tokio::spawn(async move {
                let tls = match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(sock)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::debug!(peer = %addr, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(peer = %addr, "no TLS handshake within {HEADER_TIMEOUT:?}");
                        return;
                    }
                };
                let h2 = tls.get_ref().1.alpn_protocol() == Some(ALPN_H2);
                serve_hyper(state, addr, tls, h2, true, permit).await;
            });
        },
    )
    .await;
}
