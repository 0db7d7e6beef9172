"""The REST API beside the UI (docs/architecture.md): OpenAI-compatible steered chat and
completions, and JSON endpoints for concepts, vectors, comparisons and health.

``server`` wires the routes into the app's FastAPI server; ``openai_routes`` and ``lab_routes``
hold them; ``schemas`` the bodies; ``parsing`` turns bodies into the core's requests; ``work``
runs the model's work in threads and turns requests away when too many wait; ``auth`` and
``errors`` the login and the JSON errors; ``uploads`` the vectors uploaded to steer with.
The core never imports this package.
"""
