//! Which console page or form does what each REST operation does, and which operations have no
//! console counterpart on purpose. The integration test `console::every_api_operation_has_a_console_path`
//! walks the served OpenAPI document against these two tables: an operation in neither fails
//! it, and so does a console route here that the router does not answer.
//!
//! The tables live here, beside the console's routes, rather than in the test: whoever adds an
//! API operation or moves a console route edits them in the same change, and a reader of the
//! console can see which page stands for which operation.
//!
//! Paths are written as the OpenAPI document writes them, console paths with the same
//! parameter names (`{device_id}`, not `{id}`), so the test can fill both from one set of ids.

/// One REST operation and the console route that does the same.
pub struct Covered {
    /// `GET`, `POST`, `PATCH`, `DELETE`.
    pub method: &'static str,
    pub path: &'static str,
    pub console_method: &'static str,
    pub console_path: &'static str,
    /// Where the mapping is not the obvious page or form, what the operator uses there.
    pub note: &'static str,
}

/// A REST operation the console does not offer, and why.
pub struct Exception {
    pub method: &'static str,
    pub path: &'static str,
    pub reason: &'static str,
}

const fn op(
    method: &'static str,
    path: &'static str,
    console_method: &'static str,
    console_path: &'static str,
    note: &'static str,
) -> Covered {
    Covered {
        method,
        path,
        console_method,
        console_path,
        note,
    }
}

/// Every REST operation an operator may want, and where the console does it.
pub const COVERED: &[Covered] = &[
    // Credentials.
    op("GET", "/credentials", "GET", "/console/credentials", ""),
    op("POST", "/credentials", "POST", "/console/credentials", ""),
    op(
        "GET",
        "/credentials/{credential_id}",
        "GET",
        "/console/credentials/{credential_id}/edit",
        "the edit form shows everything but the secrets, which are write-only",
    ),
    op(
        "PATCH",
        "/credentials/{credential_id}",
        "POST",
        "/console/credentials/{credential_id}",
        "",
    ),
    op(
        "DELETE",
        "/credentials/{credential_id}",
        "POST",
        "/console/credentials/{credential_id}/delete",
        "after a confirmation page (GET of the same path)",
    ),
    // Devices.
    op("GET", "/devices", "GET", "/console/devices", ""),
    op("POST", "/devices", "POST", "/console/devices", ""),
    op(
        "GET",
        "/devices/export",
        "GET",
        "/console/devices/export",
        "",
    ),
    op(
        "POST",
        "/devices/import",
        "POST",
        "/console/devices/import",
        "",
    ),
    op("POST", "/devices/tags", "POST", "/console/devices/tags", ""),
    op(
        "GET",
        "/devices/{device_id}",
        "GET",
        "/console/devices/{device_id}",
        "",
    ),
    op(
        "PATCH",
        "/devices/{device_id}",
        "POST",
        "/console/devices/{device_id}",
        "",
    ),
    op(
        "DELETE",
        "/devices/{device_id}",
        "POST",
        "/console/devices/{device_id}/delete",
        "after a confirmation page that counts what goes with it",
    ),
    op(
        "GET",
        "/devices/{device_id}/commands",
        "GET",
        "/console/devices/{device_id}",
        "the device page lists its commands",
    ),
    op(
        "POST",
        "/devices/{device_id}/commands",
        "POST",
        "/console/devices/{device_id}/commands",
        "",
    ),
    op(
        "GET",
        "/devices/{device_id}/commands/{command_id}",
        "GET",
        "/console/devices/{device_id}/commands/{command_id}/edit",
        "",
    ),
    op(
        "PATCH",
        "/devices/{device_id}/commands/{command_id}",
        "POST",
        "/console/devices/{device_id}/commands/{command_id}",
        "",
    ),
    op(
        "DELETE",
        "/devices/{device_id}/commands/{command_id}",
        "POST",
        "/console/devices/{device_id}/commands/{command_id}/delete",
        "after a confirmation page",
    ),
    op(
        "POST",
        "/devices/{device_id}/commands/{command_id}/run",
        "POST",
        "/console/devices/{device_id}/commands/{command_id}/run",
        "",
    ),
    op(
        "GET",
        "/devices/{device_id}/commands/{command_id}/schedules",
        "GET",
        "/console/schedules",
        "the schedule list names each schedule's command and device",
    ),
    op(
        "POST",
        "/devices/{device_id}/commands/{command_id}/schedules",
        "POST",
        "/console/schedules",
        "the new-schedule form, opened from the command's Schedule… link",
    ),
    op(
        "GET",
        "/devices/{device_id}/configs",
        "GET",
        "/console/devices/{device_id}",
        "the device page lists its configuration versions",
    ),
    op(
        "GET",
        "/devices/{device_id}/configs/diff",
        "GET",
        "/console/devices/{device_id}/configs",
        "",
    ),
    op(
        "GET",
        "/devices/{device_id}/configs/{version}",
        "GET",
        "/console/devices/{device_id}/configs/{version}",
        "",
    ),
    op(
        "GET",
        "/devices/{device_id}/inventory",
        "GET",
        "/console/devices/{device_id}",
        "the device page shows the latest inventory",
    ),
    op(
        "GET",
        "/devices/{device_id}/inventory/diff",
        "GET",
        "/console/devices/{device_id}/inventory",
        "",
    ),
    op(
        "GET",
        "/devices/{device_id}/inventory/history",
        "GET",
        "/console/devices/{device_id}",
        "the device page lists the inventory history",
    ),
    op(
        "GET",
        "/devices/{device_id}/jobs",
        "GET",
        "/console/devices/{device_id}",
        "the device page lists the jobs that target it",
    ),
    op(
        "GET",
        "/devices/{device_id}/results",
        "GET",
        "/console/runs?device_id={device_id}",
        "",
    ),
    // Fleet jobs.
    op("GET", "/jobs", "GET", "/console/jobs", ""),
    op("POST", "/jobs", "POST", "/console/jobs", ""),
    op(
        "POST",
        "/jobs/preview",
        "POST",
        "/console/jobs/preview",
        "the job form previews the devices its target matches as it is typed",
    ),
    op("GET", "/jobs/{job_id}", "GET", "/console/jobs/{job_id}", ""),
    op(
        "PATCH",
        "/jobs/{job_id}",
        "POST",
        "/console/jobs/{job_id}",
        "",
    ),
    op(
        "DELETE",
        "/jobs/{job_id}",
        "POST",
        "/console/jobs/{job_id}/delete",
        "after a confirmation page",
    ),
    op(
        "GET",
        "/jobs/{job_id}/devices",
        "GET",
        "/console/jobs/{job_id}",
        "the job page lists the devices it matches now",
    ),
    op(
        "GET",
        "/jobs/{job_id}/runs",
        "GET",
        "/console/jobs/{job_id}",
        "the job page lists its recent job runs",
    ),
    op(
        "POST",
        "/jobs/{job_id}/runs",
        "POST",
        "/console/jobs/{job_id}/run",
        "",
    ),
    op(
        "GET",
        "/jobs/{job_id}/schedules",
        "GET",
        "/console/jobs/{job_id}",
        "the job page lists its schedules",
    ),
    op(
        "POST",
        "/jobs/{job_id}/schedules",
        "POST",
        "/console/schedules",
        "the new-schedule form offers jobs beside device commands",
    ),
    op(
        "GET",
        "/job-runs/{job_run_id}",
        "GET",
        "/console/job-runs/{job_run_id}",
        "",
    ),
    op(
        "POST",
        "/job-runs/{job_run_id}/cancel",
        "POST",
        "/console/job-runs/{job_run_id}/cancel",
        "",
    ),
    op(
        "POST",
        "/job-runs/{job_run_id}/retry-failed",
        "POST",
        "/console/job-runs/{job_run_id}/retry-failed",
        "",
    ),
    op(
        "GET",
        "/job-runs/{job_run_id}/runs",
        "GET",
        "/console/job-runs/{job_run_id}/grid",
        "the grid of the job run page",
    ),
    // Runs.
    op("GET", "/runs", "GET", "/console/runs", ""),
    op("GET", "/runs/{run_id}", "GET", "/console/runs/{run_id}", ""),
    op(
        "POST",
        "/runs/{run_id}/cancel",
        "POST",
        "/console/runs/{run_id}/cancel",
        "",
    ),
    op(
        "GET",
        "/runs/{run_id}/output",
        "GET",
        "/console/runs/{run_id}",
        "the run page shows the output in pages of 64 KiB",
    ),
    op(
        "GET",
        "/runs/{run_id}/output/live",
        "GET",
        "/console/runs/{run_id}/live",
        "the run page follows it while the run is live",
    ),
    // Schedules.
    op("GET", "/schedules", "GET", "/console/schedules", ""),
    op(
        "GET",
        "/schedules/{schedule_id}",
        "GET",
        "/console/schedules/{schedule_id}/edit",
        "",
    ),
    op(
        "PATCH",
        "/schedules/{schedule_id}",
        "POST",
        "/console/schedules/{schedule_id}",
        "",
    ),
    op(
        "DELETE",
        "/schedules/{schedule_id}",
        "POST",
        "/console/schedules/{schedule_id}/delete",
        "after a confirmation page",
    ),
    op(
        "POST",
        "/schedules/{schedule_id}/pause",
        "POST",
        "/console/schedules/{schedule_id}/pause",
        "",
    ),
    op(
        "POST",
        "/schedules/{schedule_id}/resume",
        "POST",
        "/console/schedules/{schedule_id}/resume",
        "",
    ),
    op(
        "GET",
        "/schedules/{schedule_id}/preview",
        "GET",
        "/console/schedules/{schedule_id}/edit",
        "the edit form previews the next fire times as it is typed",
    ),
    // Webhooks.
    op("GET", "/webhooks", "GET", "/console/webhooks", ""),
    op("POST", "/webhooks", "POST", "/console/webhooks", ""),
    op(
        "GET",
        "/webhooks/{webhook_id}",
        "GET",
        "/console/webhooks/{webhook_id}/edit",
        "",
    ),
    op(
        "PATCH",
        "/webhooks/{webhook_id}",
        "POST",
        "/console/webhooks/{webhook_id}",
        "",
    ),
    op(
        "DELETE",
        "/webhooks/{webhook_id}",
        "POST",
        "/console/webhooks/{webhook_id}/delete",
        "after a confirmation page",
    ),
    op(
        "GET",
        "/webhooks/{webhook_id}/deliveries",
        "GET",
        "/console/webhooks/{webhook_id}/edit",
        "the edit page lists the latest deliveries",
    ),
    // People and access.
    op(
        "GET",
        "/me",
        "GET",
        "/console/account",
        "the header names who is signed in too",
    ),
    op(
        "GET",
        "/tokens",
        "GET",
        "/console/account",
        "your own tokens",
    ),
    op(
        "POST",
        "/tokens",
        "POST",
        "/console/account/tokens",
        "for yourself; a token for a service account is created through the API",
    ),
    op(
        "DELETE",
        "/tokens/{token_id}",
        "POST",
        "/console/account/tokens/{token_id}/revoke",
        "",
    ),
    op("GET", "/users", "GET", "/console/users", ""),
    op("POST", "/users", "POST", "/console/users", ""),
    op(
        "GET",
        "/users/{user_id}",
        "GET",
        "/console/users/{user_id}/edit",
        "",
    ),
    op(
        "PATCH",
        "/users/{user_id}",
        "POST",
        "/console/users/{user_id}",
        "",
    ),
    op("GET", "/audit", "GET", "/console/audit", ""),
];

/// The operations the console deliberately does not offer.
pub const EXCEPTIONS: &[Exception] = &[
    Exception {
        method: "GET",
        path: "/health",
        reason: "a liveness probe for orchestrators and load balancers, not for people",
    },
    Exception {
        method: "GET",
        path: "/ready",
        reason: "a readiness probe for orchestrators; the overview shows the scheduler's \
                 lateness and unreachable devices to people",
    },
    Exception {
        method: "GET",
        path: "/metrics",
        reason: "Prometheus text for a scraper; dashboards belong in Prometheus and Grafana",
    },
];
