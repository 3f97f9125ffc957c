"""Evidence for reviewers: what is kept of a decision, where the model looked, and the page that shows it."""
