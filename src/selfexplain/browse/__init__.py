"""The feature browser (`selfexplain browse`): a read-only web app over a warehouse."""
