"""The staff pages: live dashboard, its SSE stream and the test tools."""
