// Registering the extension at most once per page.
//
// ComfyUI serves a pack's web folder under two names when the pack declares it both as
// WEB_DIRECTORY (read by every ComfyUI) and as [tool.comfy] web in pyproject.toml (read by newer
// ones), so the frontend imports this extension twice; its registerExtension throws on the second
// copy ("Extension named ... already registered"). The second copy must stay silent instead.

/** Register `extension` with `app` unless one of that name is registered; true if it was added. */
export function registerOnce(app, extension) {
  const installed = app.extensions ?? [];
  if (installed.some((other) => other?.name === extension.name)) return false;
  app.registerExtension(extension);
  return true;
}
