// Loads the WASM client. A file rather than an inline script, so the page's
// Content-Security-Policy can forbid inline scripts.
import init from "/casataa_web.js";
init({ module_or_path: "/casataa_web_bg.wasm" });
