//! Cloudflare Worker adapter
