// The server's Content-Security-Policy allows styles from this origin's files only
// (style-src 'self'): a <style> element, or a style="" attribute, made by a script is
// refused. xterm.js's DOM renderer makes both (its theme colours and cell sizes, measured at
// run time). This module, imported before anything else, gives those calls what CSSOM
// allows under the same policy:
//   * document.createElement('style') answers an inert stand-in element whose text goes
//     into a constructed stylesheet (document.adoptedStyleSheets), removed with it;
//   * element.setAttribute('style', text) sets element.style.cssText.
// Markup the browser parses (an injected <style> or style="") still meets the policy: the
// parser never calls these, so what the policy guards against stays refused.

const createElement = Document.prototype.createElement;
const setAttribute = Element.prototype.setAttribute;

function styleStandIn(doc) {
  const sheet = new CSSStyleSheet();
  const element = createElement.call(doc, 'corral-style');
  element.hidden = true;
  let text = '';
  Object.defineProperty(element, 'textContent', {
    get: () => text,
    set: (value) => {
      text = value === null || value === undefined ? '' : String(value);
      sheet.replaceSync(text);
    },
  });
  const remove = element.remove.bind(element);
  element.remove = () => {
    doc.adoptedStyleSheets = doc.adoptedStyleSheets.filter((s) => s !== sheet);
    remove();
  };
  doc.adoptedStyleSheets = [...doc.adoptedStyleSheets, sheet];
  return element;
}

Document.prototype.createElement = function createElementUnderCsp(name, options) {
  if (typeof name === 'string' && name.toLowerCase() === 'style') return styleStandIn(this);
  return createElement.call(this, name, options);
};

Element.prototype.setAttribute = function setAttributeUnderCsp(name, value) {
  if (typeof name === 'string' && name.toLowerCase() === 'style' && this.style) {
    this.style.cssText = String(value);
    return;
  }
  setAttribute.call(this, name, value);
};
