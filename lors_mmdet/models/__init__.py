"""mmdet-registered modules of the plugin."""
