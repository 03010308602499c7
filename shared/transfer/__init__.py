"""The transfer engine, framework-free: grants for peer fetches, the file server's decisions, and the receiving side
for any source (a peer node today; Civitai and URLs on the same engine)."""
