//! Logging to stderr, and (when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, the
//! OpenTelemetry convention) the serving front end's request spans exported
//! over OTLP/gRPC. Off by default: no exporter, no cost beyond disabled spans.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::prelude::*;

/// What must outlive the run for spans to reach the collector.
pub struct Traces {
    provider: Option<SdkTracerProvider>,
    /// The exporter's gRPC client runs on it.
    _runtime: Option<tokio::runtime::Runtime>,
}

impl Traces {
    /// Sets up logging and, if configured, the OTLP exporter.
    pub fn init() -> Traces {
        let fmt = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()));
        let (provider, runtime) = match std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT") {
            Ok(endpoint) if !endpoint.is_empty() => match exporter() {
                Ok(pr) => (Some(pr.0), Some(pr.1)),
                Err(e) => {
                    eprintln!("hams: traces off: cannot export to {endpoint}: {e}");
                    (None, None)
                }
            },
            _ => (None, None),
        };
        let otel = provider.as_ref().map(|p| {
            tracing_opentelemetry::layer()
                .with_tracer(p.tracer("hams"))
                .with_filter(Targets::new().with_target(hams_dataflow::serve::TRACE_TARGET, tracing::Level::INFO))
        });
        tracing_subscriber::registry().with(fmt).with(otel).init();
        Traces {
            provider,
            _runtime: runtime,
        }
    }

    /// Sends the spans still buffered.
    pub fn flush(&self) {
        if let Some(p) = &self.provider {
            if let Err(e) = p.shutdown() {
                eprintln!("hams: flushing traces: {e}");
            }
        }
    }
}

/// The OTLP/gRPC exporter (endpoint and the rest from the `OTEL_*` variables),
/// on a runtime of its own.
fn exporter() -> Result<(SdkTracerProvider, tokio::runtime::Runtime), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("hams-traces")
        .enable_all()
        .build()?;
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "hams".into());
    let provider = runtime.block_on(async {
        let exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic().build()?;
        Ok::<_, Box<dyn std::error::Error>>(
            SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(opentelemetry_sdk::Resource::builder().with_service_name(service).build())
                .build(),
        )
    })?;
    Ok((provider, runtime))
}
