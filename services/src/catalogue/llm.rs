//! The LLM stack (4): Ollama (local models), Open WebUI (chat), LiteLLM (one
//! OpenAI-compatible gateway over local and hosted models) and Qdrant (vector database).
//!
//! Sources: Ollama's Docker docs (`ollama/ollama`, port 11434, `/root/.ollama`; the image
//! has neither curl nor wget, so the probe is `ollama list`, which asks the server); Open
//! WebUI's compose (`ghcr.io/open-webui/open-webui`, port 8080, `/app/backend/data`,
//! `OLLAMA_BASE_URL`, `WEBUI_SECRET_KEY`; its image's own curl `/health` check); LiteLLM's
//! proxy docs (`ghcr.io/berriai/litellm:main-v…`, port 4000, `/health/liveliness`,
//! `LITELLM_MASTER_KEY`; probed with Python since the image is Python); Qdrant's docs
//! (`qdrant/qdrant`, port 6333, `/readyz`; the Debian image lacks curl, so bash
//! `/dev/tcp`).

use super::build::{stack as make, svc};
use super::{config_path, BACKEND, PUBLICNET};
use crate::model::Stack;

const S: &str = "llm";

pub(super) fn stack() -> Stack {
    make(
        S,
        "Local and hosted LLMs: Ollama, Open WebUI, LiteLLM gateway, Qdrant",
        vec![
            // Pulls models, so it needs egress; it is reached over the backend only.
            svc("ollama", "ollama/ollama:0.3.14")
                .env("OLLAMA_KEEP_ALIVE", "24h")
                .vol("llm-ollama", "/root/.ollama")
                .net(&[BACKEND, PUBLICNET])
                .health_cmd(&["ollama", "list"])
                .timing(30, 10, 3, 30),
            svc("qdrant", "qdrant/qdrant:v1.12.1")
                .secret_env("QDRANT__SERVICE__API_KEY", "QDRANT_API_KEY")
                .vol("llm-qdrant", "/qdrant/storage")
                .backend()
                .health_bash_http(6333, "/readyz"),
            svc("litellm", "ghcr.io/berriai/litellm:main-v1.50.2")
                .cmd(&["--config", "/app/config.yaml", "--port", "4000"])
                .secret_env("LITELLM_MASTER_KEY", "LITELLM_MASTER_KEY")
                .secret_env("OPENAI_API_KEY", "OPENAI_API_KEY")
                .secret_env("ANTHROPIC_API_KEY", "ANTHROPIC_API_KEY")
                .bind_ro(&config_path(S, "litellm.yaml"), "/app/config.yaml")
                .backend()
                .route(4000)
                .health_python(4000, "/health/liveliness")
                .timing(30, 10, 3, 40)
                .ui("AI", "litellm.png", "OpenAI-compatible model gateway")
                .after_healthy("ollama"),
            svc("open-webui", "ghcr.io/open-webui/open-webui:v0.3.35")
                .env("OLLAMA_BASE_URL", "http://llm-ollama:11434")
                .env("OPENAI_API_BASE_URL", "http://llm-litellm:4000/v1")
                .secret_env("OPENAI_API_KEY", "LITELLM_MASTER_KEY")
                .secret_env("WEBUI_SECRET_KEY", "OPEN_WEBUI_SECRET_KEY")
                .env("VECTOR_DB", "qdrant")
                .env("QDRANT_URI", "http://llm-qdrant:6333")
                .secret_env("QDRANT_API_KEY", "QDRANT_API_KEY")
                .vol("llm-open-webui", "/app/backend/data")
                .backend()
                .route_as("chat", 8080)
                .health_curl(8080, "/health")
                .timing(30, 10, 3, 60)
                .ui("AI", "open-webui.png", "Chat with local and hosted models")
                .after_healthy("ollama")
                .after_healthy("litellm")
                .after_healthy("qdrant"),
        ],
    )
}
