//! The browser client on the public listener: `GET /hermes.js` (a classic script and a
//! CommonJS module) and `GET /hermes.mjs` (the same client as an ES module), in every mode
//! unless `HERMES_SERVE_CLIENT=off`.
//!
//! Both are the files of the `@hermes/client` package in `clients/js/`, embedded byte for
//! byte at build time: what a page loads from a gateway is what `npm pack` ships.

use actix_web::HttpResponse;

/// `clients/js/hermes.js`: defines `window.Hermes` as a classic script, `module.exports`
/// under CommonJS.
pub const HERMES_JS: &str = include_str!("../../clients/js/hermes.js");
/// `clients/js/hermes.mjs`: the ES module (`import { connect } from '/hermes.mjs'`).
pub const HERMES_MJS: &str = include_str!("../../clients/js/hermes.mjs");

/// `GET /hermes.js`.
pub async fn hermes_js() -> HttpResponse {
    script(HERMES_JS)
}

/// `GET /hermes.mjs`.
pub async fn hermes_mjs() -> HttpResponse {
    script(HERMES_MJS)
}

fn script(body: &'static str) -> HttpResponse {
    // `no-cache`: the browser revalidates, so a page never runs a client older than its
    // gateway after an upgrade. Cross-origin pages may load it (`<script src>` needs no
    // CORS, a module script does).
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("Access-Control-Allow-Origin", "*"))
        .body(body)
}
